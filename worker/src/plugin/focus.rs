//! The `focus` cost data source: imports FinOps FOCUS 1.0 cost exports, CSV files (optionally
//! gzipped), from a file or a folder on the worker's disk, or from an S3-compatible bucket
//! (objects streamed through the same parser, never held in memory whole).
//!
//! Parsing rules, from the FOCUS sample's quirks (`shared/data/focus/README.md`):
//! - the bare token `NULL` and an empty cell are both null;
//! - amounts are exact decimals (up to 11 fractional digits, negative for credits);
//! - timestamps are `YYYY-MM-DD HH:MM:SS` in UTC (RFC 3339 is accepted too);
//! - `Tags` is a JSON object inside one cell;
//! - ids are text, never numbers.
//!
//! A task imports the rows charged in its month (by `ChargePeriodStart`), and, when its service
//! account's credentials name a `billing_account_id`, only that account's rows: two service
//! accounts over one export then split it instead of counting it twice. A malformed row is
//! reported with its file and line and the rest is imported.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use futures::TryStreamExt as _;
use gleaner_common::access::Access;
use gleaner_common::billing::Month;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use object_store::ObjectStore as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use super::{CollectRequest, CostItem, Item, ItemError, ItemSender, Plugin, PluginError};

/// The options of a `focus` collector.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FocusOptions {
    /// A CSV file (`.csv`, `.csv.gz`) or a folder of them, read recursively in name order.
    pub path: Option<PathBuf>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint_url: Option<String>,
    /// The bucket's region (default `us-east-1`).
    pub region: Option<String>,
}

/// The `focus` plugin.
pub struct Focus {
    info: PluginInfo,
    /// What the operator lets `path` and `endpoint_url` reach.
    access: Arc<Access>,
}

impl Focus {
    /// The plugin, reaching the files and endpoints `access` allows.
    #[must_use]
    pub fn new(access: Arc<Access>) -> Self {
        Self {
            access,
            info: PluginInfo {
                id: "focus".into(),
                name: "FOCUS cost export".into(),
                description: "Imports FinOps FOCUS 1.0 cost exports (CSV, optionally gzipped) from any cloud.".into(),
                kind: PluginKind::CostDataSource,
                provider: "focus".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: Vec::new(),
                metrics: Vec::new(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "minLength": 1, "x-gleaner-access": "file",
                            "description": "a FOCUS CSV file (.csv or .csv.gz) or a folder of them, on the worker's disk, inside a directory of GLEANER_FILES__ALLOW"},
                        "bucket": {"type": "string", "pattern": BUCKET, "description": "an S3-compatible bucket holding the export"},
                        "prefix": {"type": "string", "description": "the export's key prefix in the bucket"},
                        "endpoint_url": {"type": "string", "minLength": 1, "x-gleaner-access": "endpoint",
                            "x-gleaner-public-endpoints": AWS_S3,
                            "description": "the S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS); addressed path-style; AWS's or one of GLEANER_NETWORK__ALLOW_ENDPOINTS"},
                        "region": {"type": "string", "pattern": REGION, "description": "the bucket's region (default us-east-1)"}
                    },
                    "oneOf": [{"required": ["path"]}, {"required": ["bucket"]}],
                    "additionalProperties": false
                }),
            },
        }
    }

    /// The options, once the operator's allowlists accept them; `path` is resolved.
    fn options(&self, options: &Value) -> Result<FocusOptions, PluginError> {
        let mut opts: FocusOptions = super::checked_options(&self.info, &self.access, options)?;
        match (&opts.path, &opts.bucket) {
            (Some(path), None) => {
                let resolved = self
                    .access
                    .file("options.path", &path.to_string_lossy())
                    .map_err(|e| PluginError::Permanent(e.to_string()))?;
                opts.path = Some(resolved);
                Ok(opts)
            }
            (None, Some(_)) => Ok(opts),
            _ => Err(PluginError::Permanent(
                "set exactly one of `path` and `bucket`".into(),
            )),
        }
    }
}

/// AWS's S3 endpoints, which `endpoint_url` may name without the operator's allowlist.
const AWS_S3: [&str; 4] = [
    "https://s3.amazonaws.com",
    "https://s3.*.amazonaws.com",
    "https://s3-external-1.amazonaws.com",
    "https://s3.dualstack.*.amazonaws.com",
];

/// A bucket's name as S3 allows it. The name and the region are written into the URL the
/// worker calls (`https://s3.{region}.amazonaws.com/{bucket}`): anything else there (`@`,
/// `/`, `#`) could point that URL at another host.
const BUCKET: &str = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// A region's name, as AWS and S3-compatible stores spell them (`eu-west-1`).
const REGION: &str = "^[a-z0-9-]{1,32}$";

#[async_trait]
impl Plugin for Focus {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    async fn verify(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        let opts = self.options(options)?;
        if opts.bucket.is_some() {
            let (store, prefix) = bucket(&opts, secret)?;
            return keys(&store, &prefix).await.map(drop);
        }
        let path = opts.path.unwrap_or_default();
        let access = self.access.clone();
        tokio::task::spawn_blocking(move || files(&path, &access).map(drop))
            .await
            .map_err(|e| PluginError::Permanent(format!("listing the export failed: {e}")))?
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let opts = self.options(&request.options)?;
        let month = request.task.billing_month()?;
        let account = request
            .secret
            .get("billing_account_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let filter = Filter { month, account };
        if opts.bucket.is_some() {
            let (store, prefix) = bucket(&opts, &request.secret)?;
            return read_bucket(&store, &prefix, &filter, &out, &request.cancel).await;
        }
        let path = opts.path.unwrap_or_default();
        let cancel = request.cancel.clone();
        let access = self.access.clone();
        tokio::task::spawn_blocking(move || {
            for file in files(&path, &access)? {
                read_file(&file, &filter, &out, &cancel)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| PluginError::Permanent(format!("the import stopped: {e}")))?
    }
}

/// Which rows a task wants.
#[derive(Clone, Debug)]
pub struct Filter {
    pub month: Month,
    pub account: Option<String>,
}

/// The export's files: `path` itself, or every `.csv` and `.csv.gz` under it, in name order.
/// Each must resolve inside a directory `access` allows: a link in an allowed folder can lead
/// anywhere.
///
/// # Errors
/// The path does not exist or cannot be read, a folder holds no export file, or a file leads
/// outside the allowed directories.
pub fn files(path: &Path, access: &Access) -> Result<Vec<PathBuf>, PluginError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| PluginError::Permanent(format!("`{}` cannot be read: {e}", path.display())))?;
    let mut out = Vec::new();
    if meta.is_file() {
        out.push(path.to_owned());
    }
    let mut dirs = if meta.is_dir() {
        vec![path.to_owned()]
    } else {
        Vec::new()
    };
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            PluginError::Permanent(format!("`{}` cannot be listed: {e}", dir.display()))
        })?;
        for entry in entries {
            let entry = entry
                .map_err(|e| PluginError::Transient(format!("listing `{}`: {e}", dir.display())))?;
            let p = entry.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // Symbolic links to folders are not followed: a cycle would never end.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                dirs.push(p);
            } else if (name.ends_with(".csv") || name.ends_with(".csv.gz")) && p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    if let Some(out_of_bounds) = out.iter().find(|f| !access.file_inside(f)) {
        return Err(PluginError::Permanent(format!(
            "`{}` leads outside the directories the operator allows (GLEANER_FILES__ALLOW)",
            out_of_bounds.display()
        )));
    }
    if out.is_empty() {
        return Err(PluginError::Permanent(format!(
            "`{}` holds no .csv or .csv.gz file",
            path.display()
        )));
    }
    Ok(out)
}

/// A reader of an export's bytes, through a gzip decoder when they start with gzip's magic
/// bytes.
fn decoded(reader: impl Read + Send + 'static) -> std::io::Result<Box<dyn Read + Send>> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    if reader.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads one file, sending its wanted rows and an error for each malformed one. Returns the
/// number of rows read.
///
/// # Errors
/// The file cannot be read, its header lacks a required column, or the worker stopped reading.
pub fn read_file(
    path: &Path,
    filter: &Filter,
    out: &ItemSender,
    cancel: &CancellationToken,
) -> Result<u64, PluginError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let reader = std::fs::File::open(path)
        .and_then(decoded)
        .map_err(|e| PluginError::Permanent(format!("`{}` cannot be read: {e}", path.display())))?;
    read_export(&name, reader, filter, out, cancel)
}

/// Reads one export file from `reader`; `name` is how errors call it.
///
/// # Errors
/// As [`read_file`].
pub fn read_export(
    name: &str,
    reader: Box<dyn Read + Send>,
    filter: &Filter,
    out: &ItemSender,
    cancel: &CancellationToken,
) -> Result<u64, PluginError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = csv
        .headers()
        .map_err(|e| PluginError::Permanent(format!("{name}: the header cannot be read: {e}")))?
        .clone();
    let columns =
        Columns::of(&header).map_err(|e| PluginError::Permanent(format!("{name}: {e}")))?;
    let mut record = csv::StringRecord::new();
    let mut rows = 0u64;
    loop {
        let line = csv.position().line() + 1;
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(PluginError::Permanent(format!(
                    "{name}: reading failed: {e}"
                )));
            }
            Err(e) => {
                out.blocking_send(row_error(name, line, &e.to_string()))?;
                continue;
            }
        }
        rows += 1;
        if rows.is_multiple_of(4096) && cancel.is_cancelled() {
            return Err(PluginError::Stopped);
        }
        let line = record.position().map_or(line, csv::Position::line);
        if record.len() != header.len() {
            let message = format!("has {} fields, the header {}", record.len(), header.len());
            out.blocking_send(row_error(name, line, &message))?;
            continue;
        }
        match columns.parse(&record) {
            Ok(cost) => {
                if Month::of(cost.charge_period_start.date_naive()) != filter.month
                    || filter
                        .account
                        .as_ref()
                        .is_some_and(|a| *a != cost.billing_account_id)
                {
                    continue;
                }
                out.blocking_send(Item::Cost(Box::new(cost)))?;
            }
            // A broken row of another month or account is that task's to report, when the
            // row says whose it is: a backfill reports it once, not once per month.
            Err(_) if !columns.may_belong(&record, filter) => {}
            Err(message) => out.blocking_send(row_error(name, line, &message))?,
        }
    }
    Ok(rows)
}

fn row_error(file: &str, line: u64, message: &str) -> Item {
    Item::Error(ItemError {
        resource_type: None,
        resource_key: None,
        message: format!("{file} line {line}: {message}"),
    })
}

/// Where each FOCUS column is in a file.
struct Columns {
    at: HashMap<&'static str, usize>,
}

const REQUIRED: &[&str] = &[
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "ChargePeriodStart",
    "ProviderName",
];

const OPTIONAL: &[&str] = &[
    "EffectiveCost",
    "ListCost",
    "ChargePeriodEnd",
    "BillingPeriodStart",
    "BillingAccountName",
    "SubAccountId",
    "SubAccountName",
    "ServiceName",
    "ServiceCategory",
    "RegionId",
    "ResourceId",
    "ChargeCategory",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingQuantity",
    "PricingUnit",
    "Tags",
];

impl Columns {
    fn of(header: &csv::StringRecord) -> Result<Self, String> {
        let mut at = HashMap::new();
        for name in REQUIRED.iter().chain(OPTIONAL) {
            if let Some(i) = header.iter().position(|h| h.trim() == *name) {
                at.insert(*name, i);
            }
        }
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| !at.contains_key(c))
            .collect();
        if missing.is_empty() {
            Ok(Self { at })
        } else {
            Err(format!(
                "not a FOCUS export: the header lacks {}",
                missing.join(", ")
            ))
        }
    }

    /// A cell, `None` when the column is absent, empty or `NULL`.
    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> Option<&'r str> {
        let v = record.get(*self.at.get(name)?)?;
        (!v.is_empty() && v != "NULL").then_some(v)
    }

    fn text(&self, record: &csv::StringRecord, name: &str) -> Option<String> {
        self.get(record, name).map(str::to_owned)
    }

    fn required<'r>(&self, record: &'r csv::StringRecord, name: &str) -> Result<&'r str, String> {
        self.get(record, name)
            .ok_or_else(|| format!("{name} is required"))
    }

    fn decimal(&self, record: &csv::StringRecord, name: &str) -> Result<Option<Decimal>, String> {
        self.get(record, name)
            .map(|v| parse_decimal(v).ok_or_else(|| format!("{name}: `{v}` is not a number")))
            .transpose()
    }

    fn time(
        &self,
        record: &csv::StringRecord,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>, String> {
        self.get(record, name)
            .map(|v| parse_time(v).ok_or_else(|| format!("{name}: `{v}` is not a timestamp")))
            .transpose()
    }

    /// Whether a row that failed to parse may be one `filter` wants: false only when its
    /// charge month or billing account can be read and are not the task's.
    fn may_belong(&self, r: &csv::StringRecord, filter: &Filter) -> bool {
        let month = self
            .get(r, "ChargePeriodStart")
            .and_then(parse_time)
            .map(|t| Month::of(t.date_naive()));
        let account = self.get(r, "BillingAccountId");
        month.is_none_or(|m| m == filter.month)
            && match (&filter.account, account) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            }
    }

    fn parse(&self, r: &csv::StringRecord) -> Result<CostItem, String> {
        let billed = self.required(r, "BilledCost")?;
        let billed_cost = parse_decimal(billed)
            .ok_or_else(|| format!("BilledCost: `{billed}` is not a number"))?;
        let start = self.required(r, "ChargePeriodStart")?;
        let charge_period_start = parse_time(start)
            .ok_or_else(|| format!("ChargePeriodStart: `{start}` is not a timestamp"))?;
        let currency = self.required(r, "BillingCurrency")?;
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(format!(
                "BillingCurrency: `{currency}` is not an ISO 4217 code"
            ));
        }
        let tags = match self.get(r, "Tags") {
            None => None,
            Some(t) => match serde_json::from_str::<Value>(t) {
                Ok(Value::Object(m)) => Some(m),
                _ => return Err(format!("Tags: `{t}` is not a JSON object")),
            },
        };
        Ok(CostItem {
            charge_period_start,
            charge_period_end: self.time(r, "ChargePeriodEnd")?,
            billing_period_start: self.time(r, "BillingPeriodStart")?,
            provider: self.required(r, "ProviderName")?.to_owned(),
            billing_account_id: self.required(r, "BillingAccountId")?.to_owned(),
            billing_account_name: self.text(r, "BillingAccountName"),
            sub_account_id: self.text(r, "SubAccountId"),
            sub_account_name: self.text(r, "SubAccountName"),
            service_name: self.text(r, "ServiceName"),
            service_category: self.text(r, "ServiceCategory"),
            region_id: self.text(r, "RegionId"),
            resource_id: self.text(r, "ResourceId"),
            charge_category: self.text(r, "ChargeCategory"),
            usage_type: self.text(r, "x_UsageType"),
            currency: currency.to_ascii_uppercase(),
            billed_cost,
            // FOCUS requires both; a null is counted as nothing rather than refusing the row.
            effective_cost: self.decimal(r, "EffectiveCost")?.unwrap_or_default(),
            list_cost: self.decimal(r, "ListCost")?.unwrap_or_default(),
            consumed_quantity: self.decimal(r, "ConsumedQuantity")?,
            consumed_unit: self.text(r, "ConsumedUnit"),
            pricing_quantity: self.decimal(r, "PricingQuantity")?,
            pricing_unit: self.text(r, "PricingUnit"),
            tags,
        })
    }
}

/// An exact decimal: plain (`-0.00000080000`) or in scientific notation (`1.5E-7`).
fn parse_decimal(s: &str) -> Option<Decimal> {
    let s = s.trim();
    s.parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(s).ok())
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), RFC 3339, or a bare date.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Some(Utc.from_utc_datetime(&t));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Some(Utc.from_utc_datetime(&t));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t))
}

/// The bucket of `opts`, with its credentials (anonymous without them), and the key prefix.
fn bucket(
    opts: &FocusOptions,
    secret: &Map<String, Value>,
) -> Result<(AmazonS3, String), PluginError> {
    let name = opts.bucket.clone().unwrap_or_default();
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&name)
        .with_region(opts.region.as_deref().unwrap_or("us-east-1"));
    if let Some(url) = &opts.endpoint_url {
        b = b
            .with_endpoint(url)
            .with_allow_http(url.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    let key = |k: &str| {
        secret
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    b = match (key("aws_access_key_id"), key("aws_secret_access_key")) {
        (Some(id), Some(secret)) => b.with_access_key_id(id).with_secret_access_key(secret),
        // No keys: an anonymous reader, rather than a search of the worker's environment.
        _ => b.with_skip_signature(true),
    };
    let store = b
        .with_http_connector(NoRedirects {
            allow_http: opts
                .endpoint_url
                .as_deref()
                .is_some_and(|u| u.starts_with("http://")),
        })
        .build()
        .map_err(|e| PluginError::Permanent(format!("bucket `{name}`: {e}")))?;
    Ok((store, opts.prefix.clone().unwrap_or_default()))
}

/// The bucket's HTTP client, built as object_store builds its own (its default timeouts, plain
/// HTTP only for an `http://` endpoint) but following no redirect: a redirect would take the
/// worker to a host the operator's allowlist never saw. A 3xx is then an error, with its status.
#[derive(Debug)]
struct NoRedirects {
    allow_http: bool,
}

impl object_store::client::HttpConnector for NoRedirects {
    fn connect(
        &self,
        _: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .https_only(!self.allow_http)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// A bucket error: permanent when the bucket said no (a missing bucket or key, refused
/// credentials: any 4xx but 429, or an answer that is not S3's), transient otherwise
/// (unreachable, timed out, throttled, 5xx).
fn store_error(what: &str, e: &object_store::Error) -> PluginError {
    use object_store::client::{HttpError, HttpErrorKind};
    let message = format!("{what}: {e}");
    let refused = match e {
        object_store::Error::NotFound { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::InvalidPath { .. } => true,
        _ => match source_of::<HttpError>(e) {
            // No answer at all: the endpoint may come back.
            Some(http) => matches!(http.kind(), HttpErrorKind::Decode),
            // An answer with a status. object_store keeps the status of a failed listing in a
            // type it does not export (its retry error), so its text is all there is to read
            // it from: the number after "status code: ".
            None => status_in(&message).is_some_and(|s| (400..500).contains(&s) && s != 429),
        },
    };
    without_response_body(if refused {
        PluginError::Permanent(message)
    } else {
        PluginError::Transient(message)
    })
}

/// The first error of type `T` in `e`'s chain of sources.
fn source_of<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        next = current.source();
    }
    None
}

/// The HTTP status object_store wrote into an error's text (`... status code: 403 Forbidden`).
fn status_in(message: &str) -> Option<u16> {
    const STATUS: &str = "status code: ";
    let at = message.find(STATUS)? + STATUS.len();
    message[at..].get(..3)?.parse().ok()
}

/// A bucket error as a caller may see it (a verification's reason, a task's error): what failed
/// and the endpoint's HTTP status, never the body of its answer, which would let a caller read
/// back the answers of whatever service `endpoint_url` names. (object_store writes a 4xx answer's body into its error's text, and does not
/// export the type that holds it apart, so the text is cut after the status.)
fn without_response_body(e: PluginError) -> PluginError {
    const STATUS: &str = "status code: ";
    let cut = |message: String| {
        if let Some(at) = message.find(STATUS) {
            let rest = &message[at + STATUS.len()..];
            // The status reads `403 Forbidden`; what follows its colon is the body.
            let status = rest.split(':').next().unwrap_or_default();
            format!("{}{STATUS}{status}", &message[..at])
        } else if let Some(at) = message.find("Server returned error response") {
            format!("{}Server returned an error response", &message[..at])
        } else if let Some(at) = message.find("invalid list response") {
            // A parser's error quotes what it could not parse.
            format!("{}an answer that is not an S3 listing", &message[..at])
        } else {
            message
        }
    };
    match e {
        PluginError::Permanent(m) => PluginError::Permanent(cut(m)),
        PluginError::Transient(m) => PluginError::Transient(cut(m)),
        PluginError::Stopped => PluginError::Stopped,
    }
}

/// The export's objects under `prefix`: every `.csv` and `.csv.gz` key, in name order.
async fn keys(store: &AmazonS3, prefix: &str) -> Result<Vec<ObjectPath>, PluginError> {
    let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let listed: Vec<_> = store
        .list(prefix.as_ref())
        .try_collect()
        .await
        .map_err(|e| store_error("listing the bucket", &e))?;
    let mut keys: Vec<ObjectPath> = listed
        .into_iter()
        .map(|m| m.location)
        .filter(|k| {
            let k = k.as_ref();
            k.ends_with(".csv") || k.ends_with(".csv.gz")
        })
        .collect();
    keys.sort();
    if keys.is_empty() {
        return Err(PluginError::Permanent(format!(
            "the bucket holds no .csv or .csv.gz object under `{}`",
            prefix.map(|p| p.to_string()).unwrap_or_default()
        )));
    }
    Ok(keys)
}

/// Reads every export object of the bucket, streamed (an object is never held in memory).
async fn read_bucket(
    store: &AmazonS3,
    prefix: &str,
    filter: &Filter,
    out: &ItemSender,
    cancel: &CancellationToken,
) -> Result<(), PluginError> {
    for key in keys(store, prefix).await? {
        let got = store
            .get(&key)
            .await
            .map_err(|e| store_error(&format!("reading `{key}`"), &e))?;
        let stream = got.into_stream().map_err(std::io::Error::other);
        // Made here, in the runtime, which the bridge's reads block on from their thread.
        let reader = SyncIoBridge::new(StreamReader::new(stream));
        let name = key.filename().unwrap_or(key.as_ref()).to_owned();
        let (filter, out, cancel) = (filter.clone(), out.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || {
            let reader = decoded(reader)
                .map_err(|e| PluginError::Transient(format!("reading `{name}`: {e}")))?;
            read_export(&name, reader, &filter, &out, &cancel)
        })
        .await
        .map_err(|e| PluginError::Permanent(format!("the import stopped: {e}")))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn the_status_of_a_failed_listing_is_read_from_its_text() {
        let listing = "listing the bucket: Generic S3 error: Error performing GET http://x/ in \
             1ms - Server returned non-2xx status code: 403 Forbidden: <Error>no</Error>";
        assert_eq!(status_in(listing), Some(403));
        assert_eq!(
            status_in("Server returned non-2xx status code: 503 x"),
            Some(503)
        );
        assert_eq!(status_in("connection refused"), None);
        assert_eq!(status_in("status code: 4"), None);
    }

    const SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/focus/focus_sample_subset.csv"
    );

    fn import(path: &Path, month: &str, account: Option<&str>) -> (Vec<CostItem>, Vec<String>) {
        let (tx, mut rx) = super::super::channel(1_000_000);
        let filter = Filter {
            month: month.parse().expect("month"),
            account: account.map(str::to_owned),
        };
        read_file(path, &filter, &tx, &CancellationToken::new()).expect("read");
        drop(tx);
        let (mut costs, mut errors) = (Vec::new(), Vec::new());
        while let Some(item) = rx.blocking_recv() {
            match item {
                Item::Cost(c) => costs.push(*c),
                Item::Error(e) => errors.push(e.message),
                Item::Resource(_) | Item::Samples(_) | Item::Catalog(_) | Item::Unchanged(_) => {
                    panic!("not a cost from a cost export")
                }
            }
        }
        (costs, errors)
    }

    fn billed(costs: &[CostItem]) -> Decimal {
        costs.iter().map(|c| c.billed_cost).sum()
    }

    /// Serves every request with `status` and `body` until the test ends.
    async fn endpoint(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn options_reaching_outside_the_allowlists_are_refused_before_any_call() {
        let focus = Focus::new(Arc::new(Access::default()));
        for options in [
            json!({"path": SAMPLE}),
            json!({"bucket": "bucket-b", "endpoint_url": "http://169.254.169.254"}),
            json!({"bucket": "bucket-b", "endpoint_url": "http://127.0.0.1:5432"}),
            // The bucket and the region are written into the URL called: nothing that would
            // move its host.
            json!({"bucket": "exports", "region": "x@10.0.0.7:8443/"}),
            json!({"bucket": "exports", "region": "evil.example#"}),
            json!({"bucket": "v1/secrets"}),
            json!({"bucket": "a@b"}),
        ] {
            let e = focus
                .verify(&options, &Map::new())
                .await
                .expect_err("refused");
            let PluginError::Permanent(reason) = &e else {
                panic!("{options}: {e:?}")
            };
            assert!(reason.starts_with("options."), "{options}: {reason}");
        }
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        use tokio::io::AsyncWriteExt as _;
        let target = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target_addr = target.local_addr().expect("address");
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = target.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let redirector = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", redirector.local_addr().expect("address"));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = redirector.accept().await {
                let mut buf = vec![0u8; 8192];
                let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nlocation: http://{target_addr}/latest/meta-data/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        let local = Access::new(&[], &["http://127.0.0.1:*".into()]).expect("allowlist");
        let e = Focus::new(Arc::new(local))
            .verify(
                &json!({"bucket": "exports", "endpoint_url": url}),
                &Map::new(),
            )
            .await
            .expect_err("a redirect is an error");
        let (PluginError::Permanent(reason) | PluginError::Transient(reason)) = &e else {
            panic!("{e:?}")
        };
        assert!(reason.contains("302"), "{reason}");
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn a_verification_shows_the_endpoints_status_but_never_its_answer() {
        let cases = [
            (
                "403 Forbidden",
                "<Error>private-body-403</Error>",
                "403 Forbidden",
            ),
            ("400 Bad Request", "private-body-400", "400 Bad Request"),
            (
                "200 OK",
                "<ListBucketResult><Contents><Key>a.csv</Key><Size>private-body-200</Size></Contents></ListBucketResult>",
                "not an S3 listing",
            ),
        ];
        for (status, body, shown) in cases {
            let url = endpoint(status, body).await;
            let options = json!({"bucket": "exports", "endpoint_url": url});
            let local = Access::new(&[], &["http://127.0.0.1:*".into()]).expect("allowlist");
            let e = Focus::new(Arc::new(local))
                .verify(&options, &Map::new())
                .await
                .expect_err(status);
            let (PluginError::Permanent(reason) | PluginError::Transient(reason)) = &e else {
                panic!("{status}: {e:?}")
            };
            assert!(reason.contains(shown), "{status}: {reason}");
            assert!(!reason.contains("private-body"), "{status}: {reason}");
        }
    }

    #[test]
    fn the_sample_sums_to_its_published_totals() {
        let (costs, errors) = import(Path::new(SAMPLE), "2024-09", None);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(costs.len(), 250);
        assert_eq!(billed(&costs).to_string(), "3.71561541189");
        let effective: Decimal = costs.iter().map(|c| c.effective_cost).sum();
        assert_eq!(effective.to_string(), "1.80063469386");
        let list: Decimal = costs.iter().map(|c| c.list_cost).sum();
        assert_eq!(list.to_string(), "3.58629443409");
        let oracle: Vec<_> = costs
            .iter()
            .filter(|c| c.provider == "Oracle")
            .cloned()
            .collect();
        assert_eq!(oracle.len(), 7);
        assert_eq!(billed(&oracle).to_string(), "0.53707392473");
        // Quoted empty strings are absent, like NULL.
        assert!(oracle.iter().all(|c| c.billing_account_name.is_none()));
        let tagged = costs.iter().filter(|c| c.tags.is_some()).count();
        assert_eq!(tagged, 250 - 67);
    }

    #[test]
    fn a_task_takes_its_month_and_its_account_only() {
        let (costs, _) = import(Path::new(SAMPLE), "2024-10", None);
        assert!(costs.is_empty(), "every row was charged in September");
        let (costs, _) = import(Path::new(SAMPLE), "2024-09", Some("20209880"));
        assert_eq!(costs.len(), 7);
    }

    #[test]
    fn broken_rows_are_reported_with_their_line_and_the_rest_kept() {
        let sample = std::fs::read_to_string(SAMPLE).expect("sample");
        let mut lines: Vec<String> = sample.lines().map(str::to_owned).collect();
        // Line 3: a cost that is not a number; line 5: a row cut short.
        lines[2] = lines[2].replacen("0.00000041370", "12abc", 1);
        lines[4] = lines[4].split(',').take(5).collect::<Vec<_>>().join(",");
        let dir = std::env::temp_dir().join(format!("gleaner-focus-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("broken.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).expect("file"),
            flate2::Compression::fast(),
        );
        gz.write_all((lines.join("\n") + "\n").as_bytes())
            .expect("write");
        gz.finish().expect("gzip");
        let (costs, errors) = import(&path, "2024-09", None);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(costs.len(), 248);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("broken.csv.gz line 3: BilledCost"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("broken.csv.gz line 5: has 5 fields"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_broken_row_of_another_month_is_left_to_that_months_task() {
        let sample = std::fs::read_to_string(SAMPLE).expect("sample");
        let mut lines: Vec<String> = sample.lines().map(str::to_owned).collect();
        lines[2] = lines[2].replacen("0.00000041370", "oops", 1);
        let dir = std::env::temp_dir().join(format!("gleaner-focus-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("broken.csv");
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        let (_, september) = import(&path, "2024-09", None);
        let (_, october) = import(&path, "2024-10", None);
        let (_, other_account) = import(&path, "2024-09", Some("20209880"));
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(september.len(), 1, "{september:?}");
        assert!(october.is_empty(), "{october:?}");
        assert!(other_account.is_empty(), "{other_account:?}");
    }

    #[test]
    fn values_parse_as_focus_writes_them() {
        assert_eq!(
            parse_decimal("-2.61370000000")
                .map(|d| d.to_string())
                .as_deref(),
            Some("-2.61370000000")
        );
        assert_eq!(parse_decimal("1.5E-7"), Some(Decimal::new(15, 8)));
        assert!(parse_decimal("1,5").is_none());
        assert!(parse_time("2024-09-18 22:00:00").is_some());
        assert!(parse_time("2024-09-18T22:00:00Z").is_some());
        assert!(parse_time("18/09/2024").is_none());
    }
}
