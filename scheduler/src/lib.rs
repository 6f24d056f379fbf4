//! gleaner-scheduler
