"""Seeds a moto server with an AWS estate for the AWS plugins' tests, and changes it.

Reads one JSON command on stdin and prints one JSON answer on stdout:

  {"do": "seed", "endpoint": URL, "regions": {REGION: {"instances": N, "reservations": R,
     "volumes": N, "vpcs": N, "subnets_per_vpc": N, "security_groups": N, "buckets": N,
     "services": true}}, "users": N, "roles": N}
    -> {"instances": {REGION: [id, ...]}, "buckets": {REGION: [name, ...]},
        "counts": {TYPE: {REGION or "": n}}}
  {"do": "terminate", "endpoint": URL, "region": R, "ids": [...]}  -> {"volumes_gone": [...]}
  {"do": "delete_bucket", "endpoint": URL, "name": NAME}
  {"do": "counts", "endpoint": URL, "regions": [...]}   -> {"counts": ...}
  {"do": "put_metrics", "endpoint": URL, "region": R, "series": [{"namespace": NS,
     "metric": NAME, "dimension": DIM, "id": VALUE, "points": [[EPOCH_SECONDS, VALUE], ...]}]}
    -> {"put": n}

`counts` is what moto itself lists, per Gleaner resource type and region: moto adds a
default VPC, subnets and security group to every region it serves, which the collector sees
too.
"""

import json
import sys

import boto3
from botocore.config import Config

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def client(endpoint, service, region):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        **CREDS,
    )


def seed(cmd):
    endpoint = cmd["endpoint"]
    out = {"instances": {}, "buckets": {}}
    for region, plan in cmd["regions"].items():
        ec2 = client(endpoint, "ec2", region)
        vpc_ids = []
        for v in range(plan.get("vpcs", 0)):
            vpc = ec2.create_vpc(CidrBlock=f"10.{v}.0.0/16")["Vpc"]["VpcId"]
            ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": f"vpc-{region}-{v}"}])
            vpc_ids.append(vpc)
            for s in range(plan.get("subnets_per_vpc", 0)):
                ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{v}.{s}.0/24")
        for g in range(plan.get("security_groups", 0)):
            where = {"VpcId": vpc_ids[0]} if vpc_ids else {}
            ec2.create_security_group(GroupName=f"sg-{g}", Description="seeded", **where)
        for n in range(plan.get("volumes", 0)):
            ec2.create_volume(
                Size=8 + n,
                AvailabilityZone=f"{region}a",
                TagSpecifications=[
                    {"ResourceType": "volume", "Tags": [{"Key": "Name", "Value": f"vol-{n}"}]}
                ],
            )
        ids = []
        total = plan.get("instances", 0)
        reservations = max(1, plan.get("reservations", total)) if total else 0
        per = -(-total // reservations) if reservations else 0
        left = total
        image = ec2.describe_images()["Images"][0]["ImageId"] if total else None
        while left > 0:
            count = min(per, left)
            got = ec2.run_instances(
                ImageId=image,
                MinCount=count,
                MaxCount=count,
                InstanceType="t3.micro",
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": [{"Key": "team", "Value": "seeded"}]}
                ],
            )
            ids.extend(i["InstanceId"] for i in got["Instances"])
            left -= count
        if ids:
            ec2.create_tags(Resources=ids[:1], Tags=[{"Key": "Name", "Value": "first"}])
        out["instances"][region] = ids
        s3 = client(endpoint, "s3", region)
        names = []
        for b in range(plan.get("buckets", 0)):
            name = f"bucket-{region}-{b}"
            if region == "us-east-1":
                s3.create_bucket(Bucket=name)
            else:
                s3.create_bucket(
                    Bucket=name, CreateBucketConfiguration={"LocationConstraint": region}
                )
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [{"Key": "team", "Value": "data"}]})
            names.append(name)
        out["buckets"][region] = names
        if plan.get("services"):
            services(endpoint, region, vpc_ids)
    iam = client(endpoint, "iam", "us-east-1")
    for u in range(cmd.get("users", 0)):
        iam.create_user(UserName=f"user-{u}", Tags=[{"Key": "team", "Value": "ops"}])
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
    )
    for r in range(cmd.get("roles", 0)):
        iam.create_role(RoleName=f"role-{r}", AssumeRolePolicyDocument=trust)
    out["counts"] = counts(endpoint, list(cmd["regions"]))
    return out


def services(endpoint, region, vpc_ids):
    """One of each other resource type in `region`."""
    rds = client(endpoint, "rds", region)
    rds.create_db_instance(
        DBInstanceIdentifier=f"db-{region}", DBInstanceClass="db.t3.micro", Engine="postgres",
        MasterUsername="admin", MasterUserPassword="password123", AllocatedStorage=20,
    )
    iam = client(endpoint, "iam", "us-east-1")
    try:
        role = iam.get_role(RoleName="lambda-runner")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(
            RoleName="lambda-runner",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
    lam = client(endpoint, "lambda", region)
    lam.create_function(
        FunctionName=f"fn-{region}", Runtime="python3.12", Role=role, Handler="app.handler",
        Code={"ZipFile": minimal_zip()},
    )
    ec2 = client(endpoint, "ec2", region)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    elb = client(endpoint, "elbv2", region)
    elb.create_load_balancer(Name=f"lb-{region}", Subnets=subnets)
    asg = client(endpoint, "autoscaling", region)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    asg.create_launch_configuration(LaunchConfigurationName=f"lc-{region}", ImageId=image, InstanceType="t3.micro")
    asg.create_auto_scaling_group(
        AutoScalingGroupName=f"asg-{region}", LaunchConfigurationName=f"lc-{region}",
        MinSize=0, MaxSize=0, DesiredCapacity=0, AvailabilityZones=[f"{region}a"],
    )
    ddb = client(endpoint, "dynamodb", region)
    ddb.create_table(
        TableName=f"table-{region}", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
    )
    eks = client(endpoint, "eks", region)
    eks.create_cluster(
        name=f"eks-{region}", roleArn=role, resourcesVpcConfig={"subnetIds": subnets}, tags={"team": "k8s"},
    )
    client(endpoint, "sqs", region).create_queue(QueueName=f"queue-{region}")
    client(endpoint, "sns", region).create_topic(Name=f"topic-{region}")


def minimal_zip():
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return 1\n")
    return buf.getvalue()


def counts(endpoint, regions):
    """What moto lists, per Gleaner type and region ("" for global types)."""
    c = {}

    def put(kind, region, n):
        if n:
            c.setdefault(kind, {})[region] = n

    for region in regions:
        ec2 = client(endpoint, "ec2", region)
        live = 0
        for page in ec2.get_paginator("describe_instances").paginate():
            for r in page["Reservations"]:
                live += sum(1 for i in r["Instances"] if i["State"]["Name"] != "terminated")
        put("aws.ec2.instance", region, live)
        put("aws.ec2.volume", region, len(ec2.describe_volumes()["Volumes"]))
        put("aws.ec2.vpc", region, len(ec2.describe_vpcs()["Vpcs"]))
        put("aws.ec2.subnet", region, len(ec2.describe_subnets()["Subnets"]))
        put("aws.ec2.security_group", region, len(ec2.describe_security_groups()["SecurityGroups"]))
        put("aws.rds.db_instance", region, len(client(endpoint, "rds", region).describe_db_instances()["DBInstances"]))
        put("aws.lambda.function", region, len(client(endpoint, "lambda", region).list_functions()["Functions"]))
        put("aws.elbv2.load_balancer", region, len(client(endpoint, "elbv2", region).describe_load_balancers()["LoadBalancers"]))
        put("aws.autoscaling.group", region, len(client(endpoint, "autoscaling", region).describe_auto_scaling_groups()["AutoScalingGroups"]))
        put("aws.dynamodb.table", region, len(client(endpoint, "dynamodb", region).list_tables()["TableNames"]))
        put("aws.eks.cluster", region, len(client(endpoint, "eks", region).list_clusters()["clusters"]))
        put("aws.sqs.queue", region, len(client(endpoint, "sqs", region).list_queues().get("QueueUrls", [])))
        put("aws.sns.topic", region, len(client(endpoint, "sns", region).list_topics()["Topics"]))
    s3 = client(endpoint, "s3", "us-east-1")
    for b in s3.list_buckets()["Buckets"]:
        loc = s3.get_bucket_location(Bucket=b["Name"]).get("LocationConstraint") or "us-east-1"
        if loc in regions:
            c.setdefault("aws.s3.bucket", {}).setdefault(loc, 0)
            c["aws.s3.bucket"][loc] += 1
    iam = client(endpoint, "iam", "us-east-1")
    put("aws.iam.user", "", len(iam.list_users()["Users"]))
    put("aws.iam.role", "", len(iam.list_roles()["Roles"]))
    return c


def put_metrics(cmd):
    """CloudWatch datapoints, one datum each, as PutMetricData takes them."""
    from datetime import datetime, timezone

    cw = client(cmd["endpoint"], "cloudwatch", cmd["region"])
    by_namespace = {}
    for s in cmd["series"]:
        for t, v in s["points"]:
            by_namespace.setdefault(s["namespace"], []).append({
                "MetricName": s["metric"],
                "Dimensions": [{"Name": s["dimension"], "Value": s["id"]}],
                "Timestamp": datetime.fromtimestamp(t, tz=timezone.utc),
                "Value": v,
            })
    n = 0
    for namespace, data in by_namespace.items():
        # PutMetricData takes up to 1,000 data a call.
        for i in range(0, len(data), 1000):
            cw.put_metric_data(Namespace=namespace, MetricData=data[i:i + 1000])
            n += len(data[i:i + 1000])
    return {"put": n}


def main():
    cmd = json.load(sys.stdin)
    endpoint = cmd["endpoint"]
    if cmd["do"] == "seed":
        out = seed(cmd)
    elif cmd["do"] == "terminate":
        ec2 = client(endpoint, "ec2", cmd["region"])
        volumes = lambda: {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
        before = volumes()
        ec2.terminate_instances(InstanceIds=cmd["ids"])
        # Their root volumes go with them (DeleteOnTermination).
        out = {"volumes_gone": sorted(before - volumes())}
    elif cmd["do"] == "delete_bucket":
        s3 = client(endpoint, "s3", "us-east-1")
        s3.delete_bucket_tagging(Bucket=cmd["name"])
        s3.delete_bucket(Bucket=cmd["name"])
        out = {}
    elif cmd["do"] == "put_metrics":
        out = put_metrics(cmd)
    elif cmd["do"] == "counts":
        out = {"counts": counts(endpoint, cmd["regions"])}
    else:
        raise SystemExit(f"unknown command {cmd['do']}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
