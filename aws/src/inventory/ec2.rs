//! EC2: instances, EBS volumes, VPCs, subnets and security groups of one region.

use aws_sdk_ec2::types::{
    Instance, InstanceStateName, Reservation, SecurityGroup, Subnet, Volume, Vpc,
};
use serde_json::Value;

use super::{Scope, Stop};
use crate::json::Obj;

pub(super) async fn instances(scope: &Scope<'_>) -> Result<(), Stop> {
    let ec2 = scope.session.ec2(scope.region);
    each_page!(
        scope,
        "ec2:DescribeInstances",
        ec2.describe_instances()
            .max_results(1000)
            .into_paginator()
            .send(),
        |page| {
            for reservation in page.reservations() {
                for i in reservation.instances() {
                    // Gone: what a later collection must see missing, so that it is marked
                    // DELETED. AWS lists terminated instances for about an hour.
                    if i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Terminated) {
                        continue;
                    }
                    let id = i.instance_id().unwrap_or_default();
                    let key = scope.arn("ec2", &format!("instance/{id}"));
                    scope.emit(key, id, instance(reservation, i)).await?;
                }
            }
        }
    );
    Ok(())
}

fn instance(r: &Reservation, i: &Instance) -> Value {
    Obj::new()
        .set("instance_id", i.instance_id())
        .set("reservation_id", r.reservation_id())
        .set("owner_id", r.owner_id())
        .set("image_id", i.image_id())
        .name("instance_type", i.instance_type())
        .name("architecture", i.architecture())
        .set("key_name", i.key_name())
        .set("launch_time", i.launch_time())
        .set(
            "placement",
            i.placement().map(|p| {
                Obj::new()
                    .set("availability_zone", p.availability_zone())
                    .set("group_name", p.group_name())
                    .name("tenancy", p.tenancy())
            }),
        )
        .set(
            "state",
            i.state()
                .map(|s| Obj::new().set("code", s.code()).name("name", s.name())),
        )
        .set("state_transition_reason", i.state_transition_reason())
        .name("monitoring", i.monitoring().and_then(|m| m.state()))
        .name("platform", i.platform())
        .set("platform_details", i.platform_details())
        .set("usage_operation", i.usage_operation())
        .set("private_dns_name", i.private_dns_name())
        .set("private_ip_address", i.private_ip_address())
        .set("public_dns_name", i.public_dns_name())
        .set("public_ip_address", i.public_ip_address())
        .set("subnet_id", i.subnet_id())
        .set("vpc_id", i.vpc_id())
        .set("root_device_name", i.root_device_name())
        .name("root_device_type", i.root_device_type())
        .name("virtualization_type", i.virtualization_type())
        .name("hypervisor", i.hypervisor())
        .name("instance_lifecycle", i.instance_lifecycle())
        .set("ebs_optimized", i.ebs_optimized())
        .set("ena_support", i.ena_support())
        .set("source_dest_check", i.source_dest_check())
        .set(
            "iam_instance_profile",
            i.iam_instance_profile().and_then(|p| p.arn()),
        )
        .set(
            "cpu_options",
            i.cpu_options().map(|c| {
                Obj::new()
                    .set("core_count", c.core_count())
                    .set("threads_per_core", c.threads_per_core())
            }),
        )
        .name(
            "http_tokens",
            i.metadata_options().and_then(|m| m.http_tokens()),
        )
        .list("security_groups", i.security_groups(), |g| {
            Obj::new()
                .set("group_id", g.group_id())
                .set("group_name", g.group_name())
                .done()
        })
        .list("block_device_mappings", i.block_device_mappings(), |b| {
            let ebs = b.ebs();
            Obj::new()
                .set("device_name", b.device_name())
                .set("volume_id", ebs.and_then(|e| e.volume_id()))
                .name("status", ebs.and_then(|e| e.status()))
                .set("attach_time", ebs.and_then(|e| e.attach_time()))
                .set(
                    "delete_on_termination",
                    ebs.and_then(|e| e.delete_on_termination()),
                )
                .done()
        })
        .list("network_interfaces", i.network_interfaces(), |n| {
            Obj::new()
                .set("network_interface_id", n.network_interface_id())
                .set("subnet_id", n.subnet_id())
                .set("vpc_id", n.vpc_id())
                .set("mac_address", n.mac_address())
                .set("private_ip_address", n.private_ip_address())
                .name("status", n.status())
                .done()
        })
        .tags(i.tags().iter().map(|t| (t.key(), t.value())))
        .done()
}

pub(super) async fn volumes(scope: &Scope<'_>) -> Result<(), Stop> {
    let ec2 = scope.session.ec2(scope.region);
    each_page!(
        scope,
        "ec2:DescribeVolumes",
        ec2.describe_volumes()
            .max_results(500)
            .into_paginator()
            .send(),
        |page| {
            for v in page.volumes() {
                let id = v.volume_id().unwrap_or_default();
                let key = scope.arn("ec2", &format!("volume/{id}"));
                scope.emit(key, id, volume(v)).await?;
            }
        }
    );
    Ok(())
}

fn volume(v: &Volume) -> Value {
    Obj::new()
        .set("volume_id", v.volume_id())
        .set("size", v.size())
        .name("volume_type", v.volume_type())
        .name("state", v.state())
        .set("iops", v.iops())
        .set("throughput", v.throughput())
        .set("availability_zone", v.availability_zone())
        .set("create_time", v.create_time())
        .set("encrypted", v.encrypted())
        .set("kms_key_id", v.kms_key_id())
        .set("snapshot_id", v.snapshot_id())
        .set("multi_attach_enabled", v.multi_attach_enabled())
        .list("attachments", v.attachments(), |a| {
            Obj::new()
                .set("instance_id", a.instance_id())
                .set("device", a.device())
                .name("state", a.state())
                .set("attach_time", a.attach_time())
                .set("delete_on_termination", a.delete_on_termination())
                .done()
        })
        .tags(v.tags().iter().map(|t| (t.key(), t.value())))
        .done()
}

pub(super) async fn vpcs(scope: &Scope<'_>) -> Result<(), Stop> {
    let ec2 = scope.session.ec2(scope.region);
    each_page!(
        scope,
        "ec2:DescribeVpcs",
        ec2.describe_vpcs()
            .max_results(1000)
            .into_paginator()
            .send(),
        |page| {
            for v in page.vpcs() {
                let id = v.vpc_id().unwrap_or_default();
                let key = scope.arn("ec2", &format!("vpc/{id}"));
                scope.emit(key, id, vpc(v)).await?;
            }
        }
    );
    Ok(())
}

fn vpc(v: &Vpc) -> Value {
    Obj::new()
        .set("vpc_id", v.vpc_id())
        .set("owner_id", v.owner_id())
        .set("cidr_block", v.cidr_block())
        .name("state", v.state())
        .set("is_default", v.is_default())
        .name("instance_tenancy", v.instance_tenancy())
        .set("dhcp_options_id", v.dhcp_options_id())
        .list(
            "cidr_block_association_set",
            v.cidr_block_association_set(),
            |c| {
                Obj::new()
                    .set("association_id", c.association_id())
                    .set("cidr_block", c.cidr_block())
                    .done()
            },
        )
        .tags(v.tags().iter().map(|t| (t.key(), t.value())))
        .done()
}

pub(super) async fn subnets(scope: &Scope<'_>) -> Result<(), Stop> {
    let ec2 = scope.session.ec2(scope.region);
    each_page!(
        scope,
        "ec2:DescribeSubnets",
        ec2.describe_subnets()
            .max_results(1000)
            .into_paginator()
            .send(),
        |page| {
            for s in page.subnets() {
                let id = s.subnet_id().unwrap_or_default();
                let key = s
                    .subnet_arn()
                    .map_or_else(|| scope.arn("ec2", &format!("subnet/{id}")), str::to_owned);
                scope.emit(key, id, subnet(s)).await?;
            }
        }
    );
    Ok(())
}

fn subnet(s: &Subnet) -> Value {
    Obj::new()
        .set("subnet_id", s.subnet_id())
        .set("subnet_arn", s.subnet_arn())
        .set("vpc_id", s.vpc_id())
        .set("owner_id", s.owner_id())
        .set("cidr_block", s.cidr_block())
        .set("availability_zone", s.availability_zone())
        .set("availability_zone_id", s.availability_zone_id())
        .set("available_ip_address_count", s.available_ip_address_count())
        .set("default_for_az", s.default_for_az())
        .set("map_public_ip_on_launch", s.map_public_ip_on_launch())
        .name("state", s.state())
        .tags(s.tags().iter().map(|t| (t.key(), t.value())))
        .done()
}

pub(super) async fn security_groups(scope: &Scope<'_>) -> Result<(), Stop> {
    let ec2 = scope.session.ec2(scope.region);
    each_page!(
        scope,
        "ec2:DescribeSecurityGroups",
        ec2.describe_security_groups()
            .max_results(1000)
            .into_paginator()
            .send(),
        |page| {
            for g in page.security_groups() {
                let id = g.group_id().unwrap_or_default();
                let key = g.security_group_arn().map_or_else(
                    || scope.arn("ec2", &format!("security-group/{id}")),
                    str::to_owned,
                );
                let name = g.group_name().unwrap_or(id).to_owned();
                scope.emit(key, &name, security_group(g)).await?;
            }
        }
    );
    Ok(())
}

fn security_group(g: &SecurityGroup) -> Value {
    let rules = |perms: &[aws_sdk_ec2::types::IpPermission]| -> Value {
        perms
            .iter()
            .map(|p| {
                Obj::new()
                    .set("ip_protocol", p.ip_protocol())
                    .set("from_port", p.from_port())
                    .set("to_port", p.to_port())
                    .list("ip_ranges", p.ip_ranges(), |r| {
                        Obj::new()
                            .set("cidr_ip", r.cidr_ip())
                            .set("description", r.description())
                            .done()
                    })
                    .list("ipv6_ranges", p.ipv6_ranges(), |r| {
                        Obj::new()
                            .set("cidr_ipv6", r.cidr_ipv6())
                            .set("description", r.description())
                            .done()
                    })
                    .list("user_id_group_pairs", p.user_id_group_pairs(), |u| {
                        Obj::new()
                            .set("group_id", u.group_id())
                            .set("user_id", u.user_id())
                            .done()
                    })
                    .done()
            })
            .collect()
    };
    Obj::new()
        .set("group_id", g.group_id())
        .set("group_name", g.group_name())
        .set("description", g.description())
        .set("vpc_id", g.vpc_id())
        .set("owner_id", g.owner_id())
        .set("ip_permissions", rules(g.ip_permissions()))
        .set("ip_permissions_egress", rules(g.ip_permissions_egress()))
        .tags(g.tags().iter().map(|t| (t.key(), t.value())))
        .done()
}
