//! IAM users and roles: global.

use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::{Scope, Stop};
use crate::json::Obj;

pub(super) async fn users(scope: &Scope<'_>) -> Result<(), Stop> {
    let iam = scope.session.iam(scope.region);
    each_page!(
        scope,
        "iam:ListUsers",
        iam.list_users().max_items(1000).into_paginator().send(),
        |page| {
            for u in page.users() {
                let data: Value = Obj::new()
                    .set("user_name", u.user_name())
                    .set("user_id", u.user_id())
                    .set("arn", u.arn())
                    .set("path", u.path())
                    .set("create_date", Some(u.create_date()))
                    .set("password_last_used", u.password_last_used())
                    .set(
                        "permissions_boundary",
                        u.permissions_boundary()
                            .and_then(|b| b.permissions_boundary_arn()),
                    )
                    .tags(u.tags().iter().map(|t| (Some(t.key()), Some(t.value()))))
                    .done();
                scope
                    .emit_at(u.arn().to_owned(), u.user_name(), None, data)
                    .await?;
            }
        }
    );
    Ok(())
}

pub(super) async fn roles(scope: &Scope<'_>) -> Result<(), Stop> {
    let iam = scope.session.iam(scope.region);
    each_page!(
        scope,
        "iam:ListRoles",
        iam.list_roles().max_items(1000).into_paginator().send(),
        |page| {
            for r in page.roles() {
                // The trust policy comes URL-encoded.
                let trust = r
                    .assume_role_policy_document()
                    .map(|d| {
                        let decoded = percent_decode_str(d).decode_utf8_lossy().into_owned();
                        serde_json::from_str(&decoded).unwrap_or(Value::String(decoded))
                    })
                    .unwrap_or(Value::Null);
                let data: Value = Obj::new()
                    .set("role_name", r.role_name())
                    .set("role_id", r.role_id())
                    .set("arn", r.arn())
                    .set("path", r.path())
                    .set("description", r.description())
                    .set("create_date", Some(r.create_date()))
                    .set("max_session_duration", r.max_session_duration())
                    .set("assume_role_policy_document", trust)
                    .set(
                        "role_last_used",
                        r.role_last_used().and_then(|u| u.last_used_date()),
                    )
                    .tags(r.tags().iter().map(|t| (Some(t.key()), Some(t.value()))))
                    .done();
                scope
                    .emit_at(r.arn().to_owned(), r.role_name(), None, data)
                    .await?;
            }
        }
    );
    Ok(())
}
