//! `gleaner costs`.

use super::{Client, Column, Error, Output, items, project, service_account};

/// Costs: imported billing data, summed or as records.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub out: Output,
}

/// The filters every cost command takes.
#[derive(Debug, Default, clap::Args)]
pub struct Filters {
    /// First day counted (YYYY-MM-DD; default: the first of this month, UTC).
    #[arg(long)]
    pub start: Option<String>,
    /// First day not counted (YYYY-MM-DD; default: a month after --start).
    #[arg(long)]
    pub end: Option<String>,
    /// Only this cloud (FOCUS ProviderName: AWS, Microsoft, demo, ...).
    #[arg(long)]
    pub provider: Option<String>,
    /// Only this project's billing accounts, by name or id.
    #[arg(long)]
    pub project: Option<String>,
    /// Only this billing service account, by name or id.
    #[arg(long)]
    pub account: Option<String>,
    /// Only this BillingAccountId.
    #[arg(long)]
    pub billing_account: Option<String>,
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Only amounts in this currency.
    #[arg(long)]
    pub currency: Option<String>,
}

/// What a summary can be grouped by, as the API names it.
const DIMENSIONS: &[&str] = &[
    "provider",
    "project",
    "service_account",
    "billing_account",
    "service",
    "region",
    "month",
    "day",
];

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Sums per group and currency; amounts exact, as the API gives them.
    Summary {
        /// Comma-separated dimensions; none gives one total per currency.
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(DIMENSIONS))]
        group_by: Vec<String>,
        #[command(flatten)]
        filters: Filters,
    },
    /// The cost records, a page at a time.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        filters: Filters,
        /// Records per page (1–1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The page after this cursor (printed under the previous page).
        #[arg(long)]
        cursor: Option<String>,
    },
}

const RECORDS: &[Column] = &[
    Column("DAY", "charge_period_start"),
    Column("PROVIDER", "provider"),
    Column("BILLING ACCOUNT", "billing_account_id"),
    Column("SERVICE", "service_name"),
    Column("REGION", "region_id"),
    Column("CURRENCY", "currency"),
    Column("BILLED", "billed_cost"),
    Column("EFFECTIVE", "effective_cost"),
];

/// Runs `gleaner costs`.
///
/// # Errors
/// What the API answers, as [`Error`].
pub async fn run(c: &Client, args: Args) -> Result<(), Error> {
    let out = args.out;
    match args.action {
        Action::Summary { group_by, filters } => {
            let mut q = filters.query(c).await?;
            if !group_by.is_empty() {
                q.push(("group_by", group_by.join(",")));
            }
            let sums = c.get("v1/costs/summary", &q).await?;
            let mut cols: Vec<Column> = group_by
                .iter()
                .filter_map(|g| DIMENSIONS.iter().find(|d| **d == g.as_str()))
                .map(|d| Column(header(d), d))
                .collect();
            cols.extend([
                Column("CURRENCY", "currency"),
                Column("BILLED", "billed_cost"),
                Column("EFFECTIVE", "effective_cost"),
            ]);
            out.list(&sums, items(&sums), &cols)
        }
        Action::Ls {
            filters,
            limit,
            cursor,
        } => {
            let mut q = filters.query(c).await?;
            q.push(("limit", limit.to_string()));
            if let Some(cur) = cursor {
                q.push(("cursor", cur));
            }
            let page = c.get("v1/costs", &q).await?;
            out.list(&page, items(&page), RECORDS)?;
            if let (super::Format::Table, Some(next)) = (out.format, page["next_cursor"].as_str()) {
                eprintln!("next page: --cursor {next}");
            }
            Ok(())
        }
    }
}

fn header(dim: &'static str) -> &'static str {
    match dim {
        "provider" => "PROVIDER",
        "project" => "PROJECT",
        "service_account" => "SERVICE ACCOUNT",
        "billing_account" => "BILLING ACCOUNT",
        "service" => "SERVICE",
        "region" => "REGION",
        "month" => "MONTH",
        _ => "DAY",
    }
}

impl Filters {
    async fn query(self, c: &Client) -> Result<Vec<(&'static str, String)>, Error> {
        let mut q = Vec::new();
        let plain = [
            ("start", self.start),
            ("end", self.end),
            ("provider", self.provider),
            ("billing_account", self.billing_account),
            ("service", self.service),
            ("region", self.region),
            ("currency", self.currency),
        ];
        q.extend(plain.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        if let Some(p) = self.project {
            q.push(("project_id", project::id(c, &p).await?));
        }
        if let Some(a) = self.account {
            q.push(("service_account_id", service_account::id(c, &a).await?));
        }
        Ok(q)
    }
}
