//! S3 buckets: global, each in its own region.

use aws_sdk_s3::types::Bucket;
use futures::{StreamExt as _, TryStreamExt as _};
use gleaner_common::provider::is_aws_region;
use serde_json::Value;

use super::{Scope, Stop};
use crate::error::Failure;
use crate::json::Obj;

/// Buckets whose location and tags are asked for at once; the session bounds the calls.
const BUCKETS_AT_ONCE: usize = 16;

pub(super) async fn buckets(scope: &Scope<'_>) -> Result<(), Stop> {
    let s3 = scope.session.s3(scope.region);
    let mut all = Vec::new();
    each_page!(
        scope,
        "s3:ListBuckets",
        s3.list_buckets().max_buckets(1000).into_paginator().send(),
        |page| {
            all.extend(page.buckets().iter().cloned());
        }
    );
    futures::stream::iter(all)
        .map(|b| bucket(scope, b))
        .buffer_unordered(BUCKETS_AT_ONCE)
        .try_collect::<()>()
        .await
}

async fn bucket(scope: &Scope<'_>, b: Bucket) -> Result<(), Stop> {
    let name = b.name().unwrap_or_default().to_owned();
    let region = match b.bucket_region() {
        Some(region) => region.to_owned(),
        None => {
            let s3 = scope.session.s3(scope.region);
            let at = scope
                .send(
                    "s3:GetBucketLocation",
                    s3.get_bucket_location().bucket(&name).send(),
                )
                .await;
            let Some(at) = scope.tolerate(&name, at).await? else {
                return Ok(());
            };
            // No constraint is us-east-1; `EU` is the old name of eu-west-1.
            match at.location_constraint().map(AsRef::as_ref) {
                None | Some("") => "us-east-1".to_owned(),
                Some("EU") => "eu-west-1".to_owned(),
                Some(r) => r.to_owned(),
            }
        }
    };
    // The region becomes the host name of the calls below.
    if !is_aws_region(&region) {
        let odd = Failure::Other(format!(
            "the bucket's region `{region}` is not a region name"
        ));
        return scope
            .report(
                Some(&name),
                Stop::Call {
                    call: "s3:GetBucketLocation",
                    failure: odd,
                },
            )
            .await
            .map_err(Stop::Plugin);
    }
    if !scope.wants_region(&region) {
        return Ok(());
    }
    let s3 = scope.session.s3(&region);
    let tagging = scope
        .send(
            "s3:GetBucketTagging",
            s3.get_bucket_tagging().bucket(&name).send(),
        )
        .await;
    let tags: Vec<(String, String)> = match tagging {
        // A bucket without tags answers with this error.
        Err(Stop::Call { ref failure, .. }) if failure.words().starts_with("NoSuchTagSet") => {
            Vec::new()
        }
        // Deleted since it was listed.
        Err(Stop::Call {
            failure: Failure::Gone(_),
            ..
        }) => return Ok(()),
        // Tags that may not be read are reported, and the bucket is kept without them.
        tagging => scope
            .tolerate(&name, tagging)
            .await?
            .map(|t| {
                t.tag_set()
                    .iter()
                    .map(|t| (t.key().to_owned(), t.value().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let data = data(&b, &region, &tags);
    let key = format!("arn:{}:s3:::{name}", scope.me.partition);
    scope.emit_at(key, &name, Some(&region), data).await
}

fn data(b: &Bucket, region: &str, tags: &[(String, String)]) -> Value {
    Obj::new()
        .set("name", b.name())
        .set("creation_date", b.creation_date())
        .set("bucket_region", region)
        .tags(
            tags.iter()
                .map(|(k, v)| (Some(k.as_str()), Some(v.as_str()))),
        )
        .done()
}
