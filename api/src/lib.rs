//! gleaner-api
