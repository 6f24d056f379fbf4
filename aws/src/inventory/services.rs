//! The regional services beyond EC2 that Cloudforet's AWS collectors cover: RDS, Lambda, ELBv2,
//! Auto Scaling, DynamoDB, EKS, SQS and SNS.

use serde_json::{Map, Value};

use super::{Scope, Stop};
use crate::json::{Obj, tag_map};

pub(super) async fn db_instances(scope: &Scope<'_>) -> Result<(), Stop> {
    let rds = scope.session.rds(scope.region);
    each_page!(
        scope,
        "rds:DescribeDBInstances",
        rds.describe_db_instances()
            .max_records(100)
            .into_paginator()
            .send(),
        |page| {
            for d in page.db_instances() {
                let id = d.db_instance_identifier().unwrap_or_default();
                let key = d
                    .db_instance_arn()
                    .map_or_else(|| scope.arn("rds", &format!("db:{id}")), str::to_owned);
                let data = Obj::new()
                    .set("db_instance_identifier", d.db_instance_identifier())
                    .set("db_instance_arn", d.db_instance_arn())
                    .set("db_instance_class", d.db_instance_class())
                    .set("engine", d.engine())
                    .set("engine_version", d.engine_version())
                    .set("db_instance_status", d.db_instance_status())
                    .set("allocated_storage", d.allocated_storage())
                    .set("storage_type", d.storage_type())
                    .set("multi_az", d.multi_az())
                    .set("availability_zone", d.availability_zone())
                    .set("publicly_accessible", d.publicly_accessible())
                    .set("storage_encrypted", d.storage_encrypted())
                    .set("instance_create_time", d.instance_create_time())
                    .set("db_name", d.db_name())
                    .set("master_username", d.master_username())
                    .set(
                        "endpoint",
                        d.endpoint()
                            .map(|e| Obj::new().set("address", e.address()).set("port", e.port())),
                    )
                    .set("vpc_id", d.db_subnet_group().and_then(|g| g.vpc_id()))
                    .list("vpc_security_groups", d.vpc_security_groups(), |g| {
                        Value::from(g.vpc_security_group_id().unwrap_or_default())
                    })
                    .tags(d.tag_list().iter().map(|t| (t.key(), t.value())))
                    .done();
                scope.emit(key, id, data).await?;
            }
        }
    );
    Ok(())
}

pub(super) async fn functions(scope: &Scope<'_>) -> Result<(), Stop> {
    let lambda = scope.session.lambda(scope.region);
    each_page!(
        scope,
        "lambda:ListFunctions",
        lambda
            .list_functions()
            .max_items(50)
            .into_paginator()
            .send(),
        |page| {
            for f in page.functions() {
                let name = f.function_name().unwrap_or_default();
                let key = f.function_arn().map_or_else(
                    || scope.arn("lambda", &format!("function:{name}")),
                    str::to_owned,
                );
                let data = Obj::new()
                    .set("function_name", f.function_name())
                    .set("function_arn", f.function_arn())
                    .name("runtime", f.runtime())
                    .set("role", f.role())
                    .set("handler", f.handler())
                    .set("code_size", Some(f.code_size()))
                    .set("description", f.description())
                    .set("timeout", f.timeout())
                    .set("memory_size", f.memory_size())
                    .set("last_modified", f.last_modified())
                    .set("version", f.version())
                    .name("package_type", f.package_type())
                    .name("state", f.state())
                    .list("architectures", f.architectures(), |a| {
                        Value::from(a.as_str())
                    })
                    .set(
                        "vpc_id",
                        f.vpc_config()
                            .and_then(|v| v.vpc_id())
                            .filter(|v| !v.is_empty()),
                    )
                    // ListFunctions carries no tags; the function's own tags need a call each.
                    .tags([])
                    .done();
                scope.emit(key, name, data).await?;
            }
        }
    );
    Ok(())
}

pub(super) async fn load_balancers(scope: &Scope<'_>) -> Result<(), Stop> {
    let elb = scope.session.elbv2(scope.region);
    each_page!(
        scope,
        "elasticloadbalancing:DescribeLoadBalancers",
        elb.describe_load_balancers()
            .page_size(400)
            .into_paginator()
            .send(),
        |page| {
            for lb in page.load_balancers() {
                let name = lb.load_balancer_name().unwrap_or_default();
                let key = lb.load_balancer_arn().unwrap_or(name).to_owned();
                let data = Obj::new()
                    .set("load_balancer_name", lb.load_balancer_name())
                    .set("load_balancer_arn", lb.load_balancer_arn())
                    .set("dns_name", lb.dns_name())
                    .set("canonical_hosted_zone_id", lb.canonical_hosted_zone_id())
                    .set("created_time", lb.created_time())
                    .name("scheme", lb.scheme())
                    .name("type", lb.r#type())
                    .name("ip_address_type", lb.ip_address_type())
                    .set("vpc_id", lb.vpc_id())
                    .name("state", lb.state().and_then(|s| s.code()))
                    .list("availability_zones", lb.availability_zones(), |z| {
                        Obj::new()
                            .set("zone_name", z.zone_name())
                            .set("subnet_id", z.subnet_id())
                            .done()
                    })
                    .strings("security_groups", lb.security_groups())
                    // DescribeLoadBalancers carries no tags; DescribeTags would take a call
                    // per 20 load balancers.
                    .tags([])
                    .done();
                scope.emit(key, name, data).await?;
            }
        }
    );
    Ok(())
}

pub(super) async fn auto_scaling_groups(scope: &Scope<'_>) -> Result<(), Stop> {
    let asg = scope.session.autoscaling(scope.region);
    each_page!(
        scope,
        "autoscaling:DescribeAutoScalingGroups",
        asg.describe_auto_scaling_groups()
            .max_records(100)
            .into_paginator()
            .send(),
        |page| {
            for g in page.auto_scaling_groups() {
                let name = g.auto_scaling_group_name().unwrap_or_default();
                let key = g.auto_scaling_group_arn().unwrap_or(name).to_owned();
                let data = Obj::new()
                    .set("auto_scaling_group_name", g.auto_scaling_group_name())
                    .set("auto_scaling_group_arn", g.auto_scaling_group_arn())
                    .set("launch_configuration_name", g.launch_configuration_name())
                    .set(
                        "launch_template",
                        g.launch_template().map(|t| {
                            Obj::new()
                                .set("launch_template_id", t.launch_template_id())
                                .set("launch_template_name", t.launch_template_name())
                                .set("version", t.version())
                        }),
                    )
                    .set("min_size", g.min_size())
                    .set("max_size", g.max_size())
                    .set("desired_capacity", g.desired_capacity())
                    .set("default_cooldown", g.default_cooldown())
                    .strings("availability_zones", g.availability_zones())
                    .strings("load_balancer_names", g.load_balancer_names())
                    .strings("target_group_arns", g.target_group_arns())
                    .set("health_check_type", g.health_check_type())
                    .set("created_time", g.created_time())
                    .set("vpc_zone_identifier", g.vpc_zone_identifier())
                    .set("status", g.status())
                    .list("instances", g.instances(), |i| {
                        Obj::new()
                            .set("instance_id", i.instance_id())
                            .set("availability_zone", i.availability_zone())
                            .name("lifecycle_state", i.lifecycle_state())
                            .set("health_status", i.health_status())
                            .done()
                    })
                    .tags(g.tags().iter().map(|t| (t.key(), t.value())))
                    .done();
                scope.emit(key, name, data).await?;
            }
        }
    );
    Ok(())
}

pub(super) async fn tables(scope: &Scope<'_>) -> Result<(), Stop> {
    let ddb = scope.session.dynamodb(scope.region);
    let mut names = Vec::new();
    each_page!(
        scope,
        "dynamodb:ListTables",
        ddb.list_tables().limit(100).into_paginator().send(),
        |page| {
            names.extend(page.table_names().iter().cloned());
        }
    );
    for name in names {
        let described = scope
            .send(
                "dynamodb:DescribeTable",
                ddb.describe_table().table_name(&name).send(),
            )
            .await;
        let Some(described) = scope.tolerate(&name, described).await? else {
            continue;
        };
        let Some(t) = described.table() else { continue };
        let key = t.table_arn().map_or_else(
            || scope.arn("dynamodb", &format!("table/{name}")),
            str::to_owned,
        );
        let data = Obj::new()
            .set("table_name", t.table_name())
            .set("table_arn", t.table_arn())
            .set("table_id", t.table_id())
            .name("table_status", t.table_status())
            .set("creation_date_time", t.creation_date_time())
            .set("item_count", t.item_count())
            .set("table_size_bytes", t.table_size_bytes())
            .name(
                "billing_mode",
                t.billing_mode_summary().and_then(|b| b.billing_mode()),
            )
            .set(
                "provisioned_throughput",
                t.provisioned_throughput().map(|p| {
                    Obj::new()
                        .set("read_capacity_units", p.read_capacity_units())
                        .set("write_capacity_units", p.write_capacity_units())
                }),
            )
            .list("key_schema", t.key_schema(), |k| {
                Obj::new()
                    .set("attribute_name", k.attribute_name())
                    .name("key_type", Some(k.key_type()))
                    .done()
            })
            .list(
                "global_secondary_indexes",
                t.global_secondary_indexes(),
                |i| Value::from(i.index_name().unwrap_or_default()),
            )
            // DescribeTable carries no tags; ListTagsOfResource would take a call per table.
            .tags([])
            .done();
        scope.emit(key, &name, data).await?;
    }
    Ok(())
}

pub(super) async fn clusters(scope: &Scope<'_>) -> Result<(), Stop> {
    let eks = scope.session.eks(scope.region);
    let mut names = Vec::new();
    each_page!(
        scope,
        "eks:ListClusters",
        eks.list_clusters().max_results(100).into_paginator().send(),
        |page| {
            names.extend(page.clusters().iter().cloned());
        }
    );
    for name in names {
        let described = scope
            .send(
                "eks:DescribeCluster",
                eks.describe_cluster().name(&name).send(),
            )
            .await;
        let Some(described) = scope.tolerate(&name, described).await? else {
            continue;
        };
        let Some(c) = described.cluster() else {
            continue;
        };
        let key = c.arn().map_or_else(
            || scope.arn("eks", &format!("cluster/{name}")),
            str::to_owned,
        );
        let tags: Map<String, Value> = c
            .tags()
            .map(|t| tag_map(t.iter().map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))))
            .unwrap_or_default();
        let data = Obj::new()
            .set("name", c.name())
            .set("arn", c.arn())
            .set("version", c.version())
            .set("platform_version", c.platform_version())
            .name("status", c.status())
            .set("endpoint", c.endpoint())
            .set("role_arn", c.role_arn())
            .set("created_at", c.created_at())
            .set(
                "resources_vpc_config",
                c.resources_vpc_config().map(|v| {
                    Obj::new()
                        .set("vpc_id", v.vpc_id())
                        .strings("subnet_ids", v.subnet_ids())
                        .strings("security_group_ids", v.security_group_ids())
                        .set("endpoint_public_access", Some(v.endpoint_public_access()))
                        .set("endpoint_private_access", Some(v.endpoint_private_access()))
                }),
            )
            .set("tags", Value::Object(tags))
            .done();
        scope.emit(key, &name, data).await?;
    }
    Ok(())
}

pub(super) async fn queues(scope: &Scope<'_>) -> Result<(), Stop> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let sqs = scope.session.sqs(scope.region);
    let mut urls = Vec::new();
    each_page!(
        scope,
        "sqs:ListQueues",
        sqs.list_queues().max_results(1000).into_paginator().send(),
        |page| {
            urls.extend(page.queue_urls().iter().cloned());
        }
    );
    for url in urls {
        let attributes = scope
            .send(
                "sqs:GetQueueAttributes",
                sqs.get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(QueueAttributeName::All)
                    .send(),
            )
            .await;
        let Some(attributes) = scope.tolerate(&url, attributes).await? else {
            continue;
        };
        let attrs: Map<String, Value> = attributes
            .attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let name = url.rsplit('/').next().unwrap_or(&url).to_owned();
        let key = attrs
            .get("QueueArn")
            .and_then(Value::as_str)
            .map_or_else(|| scope.arn("sqs", &name), str::to_owned);
        let data = Obj::new()
            .set("queue_url", url.as_str())
            .set("attributes", Value::Object(attrs))
            // ListQueueTags would take a call per queue.
            .tags([])
            .done();
        scope.emit(key, &name, data).await?;
    }
    Ok(())
}

pub(super) async fn topics(scope: &Scope<'_>) -> Result<(), Stop> {
    let sns = scope.session.sns(scope.region);
    let mut arns = Vec::new();
    each_page!(
        scope,
        "sns:ListTopics",
        sns.list_topics().into_paginator().send(),
        |page| {
            arns.extend(
                page.topics()
                    .iter()
                    .filter_map(|t| t.topic_arn().map(str::to_owned)),
            );
        }
    );
    for arn in arns {
        let attributes = scope
            .send(
                "sns:GetTopicAttributes",
                sns.get_topic_attributes().topic_arn(&arn).send(),
            )
            .await;
        let Some(attributes) = scope.tolerate(&arn, attributes).await? else {
            continue;
        };
        let attrs: Map<String, Value> = attributes
            .attributes()
            .map(|a| {
                a.iter()
                    // The access policy and delivery policies are JSON documents.
                    .map(|(k, v)| {
                        let doc = v
                            .starts_with('{')
                            .then(|| serde_json::from_str(v).ok())
                            .flatten();
                        (k.clone(), doc.unwrap_or_else(|| Value::String(v.clone())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let name = arn.rsplit(':').next().unwrap_or(&arn).to_owned();
        let data = Obj::new()
            .set("topic_arn", arn.as_str())
            .set("attributes", Value::Object(attrs))
            .tags([])
            .done();
        scope.emit(arn, &name, data).await?;
    }
    Ok(())
}
