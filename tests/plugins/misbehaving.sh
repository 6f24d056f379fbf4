#!/bin/sh
# A plugin that misbehaves on purpose, for the tests: `misbehaving.sh BEHAVIOUR [PROVIDER]`.
#   garbage  two resources, then a line that is not JSON
#   sleepy   one resource, then sleeps far past any test's timeout
#   crash    one resource, then exits 3 without `done`
#   leaky    echoes its request (credentials included) to stderr, then fails
#   noinit   fails its init call
#   lingering one resource and `done`, then leaves a child holding stdout open for 30 s
#   slow     appends "start PID" to the file LOG (third argument), sleeps 1 s, appends "end PID"
#   flaky    exits 75 (temporary failure) on attempts 1 and 2, then reports one resource
#   nul      NUL characters everywhere PostgreSQL refuses them: raw in stderr, in an item
#            error's message, in a resource's data and in another's name; one clean resource
#   twice    200 resources, each reported twice: {"n":1}, then {"n":2} three items later
#   picky    verifies only the aws_secret_access_key `right-key`; refuses any other, echoing it
#            on stderr (a credential in the reason, which Gleaner must redact)
behaviour=$1
provider=${2:-demo}
log=$3
read -r request
case "$request" in
*'"method":"init"'*)
    if [ "$behaviour" = noinit ]; then
        echo "noinit: cannot load configuration" >&2
        exit 1
    fi
    echo '{"type":"metadata","name":"Misbehaving","kind":"collector","provider":"'"$provider"'"}'
    exit 0
    ;;
esac
resource() {
    echo '{"type":"resource","resource_type":"test.thing","resource_key":"'"$1"'","data":{"n":'"$2"'}}'
}
case "$behaviour" in
garbage)
    resource a 1
    resource b 2
    echo 'Segmentation fault (core dumped)'
    resource c 3
    echo '{"type":"done"}'
    ;;
sleepy)
    resource a 1
    sleep 60
    echo '{"type":"done"}'
    ;;
crash)
    resource a 1
    echo "crash: about to fail" >&2
    exit 3
    ;;
lingering)
    resource a 1
    echo '{"type":"done"}'
    sleep 30 &
    ;;
slow)
    echo "start $$" >>"$log"
    sleep 1
    resource a 1
    echo "end $$" >>"$log"
    echo '{"type":"done"}'
    ;;
flaky)
    attempt=$(printf '%s' "$request" | sed -n 's/.*"attempt":\([0-9]*\).*/\1/p')
    if [ "${attempt:-1}" -lt 3 ]; then
        echo "flaky: endpoint unreachable on attempt $attempt" >&2
        exit 75
    fi
    resource a 1
    echo '{"type":"done"}'
    ;;
nul)
    printf 'nul: a NUL \000 byte on stderr\n' >&2
    resource clean 1
    # printf, not echo: dash's echo reads backslashes.
    printf '%s\n' '{"type":"resource","resource_type":"test.thing","resource_key":"in-data","data":{"n":"a\u0000b"}}'
    printf '%s\n' '{"type":"resource","resource_type":"test.thing","resource_key":"in-name","name":"x\u0000y","data":{"n":2}}'
    printf '%s\n' '{"type":"error","resource_key":"failing","message":"cannot read \u0000 this"}'
    echo '{"type":"done"}'
    ;;
twice)
    i=1
    while [ $i -le 203 ]; do
        [ $i -le 200 ] && resource "k$i" 1
        [ $i -gt 3 ] && resource "k$((i - 3))" 2
        i=$((i + 1))
    done
    echo '{"type":"done"}'
    ;;
picky)
    case "$request" in
    *'"aws_secret_access_key":"right-key"'*)
        echo '{"type":"verified"}'
        ;;
    *)
        key=$(printf '%s' "$request" | sed -n 's/.*"aws_secret_access_key":"\([^"]*\)".*/\1/p')
        echo "picky: AccessDenied: the key $key was refused" >&2
        exit 1
        ;;
    esac
    ;;
leaky)
    echo "leaky: got $request" >&2
    exit 1
    ;;
esac
