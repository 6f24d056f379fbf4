#!/bin/sh
# A private cost data source for the tests, standing in for a Hyperbilling plugin: for the
# task's month it reports two cost records of the account named in the credentials
# (`secret.account`), amounts as decimal strings.
read -r request
case "$request" in
*'"method":"init"'*)
    echo '{"type":"metadata","name":"Test costs","kind":"cost_data_source","provider":"hyperbilling"}'
    exit 0
    ;;
*'"method":"verify"'*)
    echo '{"type":"verified"}'
    exit 0
    ;;
esac
month=$(printf '%s' "$request" | sed -n 's/.*"month":"\([0-9-]*\)".*/\1/p')
account=$(printf '%s' "$request" | sed -n 's/.*"account":"\([^"]*\)".*/\1/p')
for day in 01 02; do
    echo '{"type":"cost","charge_period_start":"'"$month"'-'"$day"'T00:00:00Z","provider":"AWS","billing_account_id":"'"$account"'","service_name":"Amazon EC2","currency":"KRW","billed_cost":"1000.10","effective_cost":"900.09"}'
done
echo '{"type":"done"}'
