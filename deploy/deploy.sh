#!/usr/bin/env bash
# Ships the meetup.com collector to Google Cloud: APIs, buckets, Firestore, the
# error topic, secrets, one service account per role with only the rights it
# needs, the four Cloud Functions, the two error log sinks, and the VM that runs
# trigger_gcf.py as a systemd service.
#
#   deploy/deploy.sh --project ID --region REGION [options]   (--help lists them)
#
# Every step is safe to repeat: each create is guarded by a describe, and every
# other command (enable, IAM bindings, function deploys, VM setup) is idempotent.
# --dry-run prints the whole plan, guards included, without needing or calling
# gcloud. Secrets are read from environment variables or files, never from the
# command line, and their values are never printed.
set -euo pipefail

# shellcheck disable=SC2016  # the $NAMEs in the help are text
readonly USAGE='Usage: deploy/deploy.sh --project ID --region REGION [options]

Required:
  --project ID               Google Cloud project id (6-30 of a-z, 0-9, -)
  --region REGION            region of the functions, buckets and Firestore,
                             e.g. europe-west1

Options (defaults in brackets):
  --zone ZONE                zone of the VM [REGION-b]
  --data-bucket NAME         bucket for stream items [PROJECT-meetup-data]
  --error-bucket NAME        bucket for ERROR log entries [PROJECT-meetup-error-logs]
  --machine-type TYPE        VM machine type [e2-small]
  --vm-name NAME             VM instance name [meetup-collector]
  --image-family FAMILY      Debian image family of the VM [debian-13]
  --topic NAME               Pub/Sub topic for ERROR entries [meetup-error-logs]
  --runtime RUNTIME          Cloud Functions Python runtime [python312]
  --firestore-location LOC   location of a new Firestore database [REGION]
  --members-collection NAME  Firestore collection of members [members]
  --groups-collection NAME   Firestore collection of groups [groups]
  --meetup-api-url URL       Meetup API the functions call [https://api.meetup.com]
  --stream-url URL           stream server the VM reads [http://stream.meetup.com]
  --meetup-api-key-file PATH file holding the Meetup API key
  --slack-webhook-file PATH  file holding the Slack webhook URL
  --iap                      reach the VM over IAP TCP forwarding for ssh/scp
  --dry-run                  print every command, change nothing, need no gcloud
  -h, --help                 show this help

Secrets: the Meetup API key comes from $MEETUP_API_KEY or --meetup-api-key-file,
the Slack webhook URL from $SLACK_WEBHOOK_URL or --slack-webhook-file. On a
re-run either may be left out: the secret then keeps its latest version.'

readonly FUNCTIONS_SOURCE=functions
readonly HTTP_FUNCTIONS=(save_stream_data save_member_data save_group_data)
readonly SLACK_FUNCTION=report_slack
# A gen2 function runs as a Cloud Run service named after it with "_" as "-".
readonly SLACK_SERVICE=report-slack

readonly APIS=(
  cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
  artifactregistry.googleapis.com eventarc.googleapis.com pubsub.googleapis.com
  storage.googleapis.com firestore.googleapis.com logging.googleapis.com
  secretmanager.googleapis.com compute.googleapis.com iam.googleapis.com
)

readonly MEETUP_KEY_SECRET=meetup-api-key
readonly SLACK_WEBHOOK_SECRET=slack-webhook-url

readonly STREAM_ACCOUNT=meetup-stream-fn      # save_stream_data
readonly PROFILE_ACCOUNT=meetup-profile-fn    # save_member_data, save_group_data
readonly SLACK_ACCOUNT=meetup-slack-fn        # report_slack at run time
readonly TRIGGER_ACCOUNT=meetup-error-trigger # Eventarc: delivers to report_slack
readonly VM_ACCOUNT=meetup-collector-vm       # trigger_gcf.py on the VM
readonly BUILD_ACCOUNT=meetup-fn-build        # Cloud Build, for the deploys

readonly BUCKET_SINK=meetup-errors-to-bucket
readonly TOPIC_SINK=meetup-errors-to-slack

# Where vm-setup.sh and meetup-collector.service put things on the VM.
readonly VM_CONFIG_PATH=/etc/meetup-collector/config.json
readonly VM_STATE_DIR=/var/lib/meetup-collector

DRY_RUN=0
SSH_FLAGS=()
PROJECT=
REGION=
ZONE=
DATA_BUCKET=
ERROR_BUCKET=
MACHINE_TYPE=e2-small
VM_NAME=meetup-collector
IMAGE_FAMILY=debian-13
TOPIC=meetup-error-logs
RUNTIME=python312
FIRESTORE_LOCATION=
MEMBERS_COLLECTION=members
GROUPS_COLLECTION=groups
MEETUP_API_URL=https://api.meetup.com
STREAM_URL=http://stream.meetup.com
MEETUP_API_KEY_FILE=
SLACK_WEBHOOK_FILE=

# Plan lines go to the terminal even from inside $(...).
exec 3>&1

die() {
  printf 'deploy.sh: error: %s\n' "$*" >&2
  exit 1
}

usage_error() {
  printf 'deploy.sh: error: %s\n(see deploy/deploy.sh --help)\n' "$*" >&2
  exit 2
}

say() {
  printf '%s\n' "$*" >&3
}

section() {
  printf '\n== %s ==\n' "$*" >&3
}

# Sets REPLY to the arguments quoted so that the line can be pasted into a shell.
shell_quote() {
  local arg quoted=()
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      quoted+=("$arg")
    else
      quoted+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  REPLY=${quoted[*]}
}

# A command that changes something: printed as "+ ...", run unless dry.
run() {
  shell_quote "$@"
  say "+ $REPLY"
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

# The same, retried: a grant to a service account created moments ago can fail
# until IAM has propagated the new account.
run_retrying() {
  shell_quote "$@"
  local command_line=$REPLY attempt
  say "+ $command_line"
  if ((DRY_RUN)); then
    return 0
  fi

  for attempt in 1 2 3 4 5; do
    if "$@"; then
      return 0
    fi
    if ((attempt < 5)); then
      say "  (failed; retrying in $((attempt * 10)) s)"
      sleep $((attempt * 10))
    fi
  done
  die "failed 5 times: $command_line"
}

# A guard that only reads: printed as "? ...". Succeeds if the resource exists;
# in a dry run it is assumed absent.
exists() {
  shell_quote "$@"
  say "? $REPLY"
  if ((DRY_RUN)); then
    return 1
  fi
  "$@" >/dev/null 2>&1
}

# A read whose output the plan needs: printed as "? ...", its output on stdout;
# in a dry run the placeholder ($1) stands in for it.
read_value() {
  local placeholder=$1
  shift
  shell_quote "$@"
  say "? $REPLY"
  if ((DRY_RUN)); then
    printf '%s\n' "$placeholder"
    return 0
  fi
  "$@"
}

parse_args() {
  local value_flags=(
    --project --region --zone --data-bucket --error-bucket --machine-type
    --vm-name --image-family --topic --runtime --firestore-location
    --members-collection --groups-collection --meetup-api-url --stream-url
    --meetup-api-key-file --slack-webhook-file
  )
  local position=0

  while (($# > 0)); do
    local flag=$1 value='' inline=0
    position=$((position + 1))
    if [[ $flag == --*=* ]]; then
      value=${flag#*=}
      flag=${flag%%=*}
      inline=1
    fi

    case $flag in
      --dry-run)
        DRY_RUN=1
        shift
        continue
        ;;
      --iap)
        SSH_FLAGS=(--tunnel-through-iap)
        shift
        continue
        ;;
      -h | --help)
        printf '%s\n' "$USAGE"
        exit 0
        ;;
      --meetup-api-key | --slack-webhook | --slack-webhook-url)
        # The value is not echoed: it is a secret typed where it should not be.
        usage_error "$flag is not accepted: secrets never go on the command line" \
          "(shell history and ps keep it); set MEETUP_API_KEY / SLACK_WEBHOOK_URL" \
          "or use --meetup-api-key-file / --slack-webhook-file"
        ;;
      --*) [[ " ${value_flags[*]} " == *" $flag "* ]] || usage_error "unknown option: $flag" ;;
      *) usage_error "unexpected argument #$position (not shown); options start with --" ;;
    esac

    if ((!inline)); then
      (($# >= 2)) || usage_error "$flag needs a value"
      value=$2
      shift
    fi
    shift

    case $flag in
      --project) PROJECT=$value ;;
      --region) REGION=$value ;;
      --zone) ZONE=$value ;;
      --data-bucket) DATA_BUCKET=$value ;;
      --error-bucket) ERROR_BUCKET=$value ;;
      --machine-type) MACHINE_TYPE=$value ;;
      --vm-name) VM_NAME=$value ;;
      --image-family) IMAGE_FAMILY=$value ;;
      --topic) TOPIC=$value ;;
      --runtime) RUNTIME=$value ;;
      --firestore-location) FIRESTORE_LOCATION=$value ;;
      --members-collection) MEMBERS_COLLECTION=$value ;;
      --groups-collection) GROUPS_COLLECTION=$value ;;
      --meetup-api-url) MEETUP_API_URL=$value ;;
      --stream-url) STREAM_URL=$value ;;
      --meetup-api-key-file) MEETUP_API_KEY_FILE=$value ;;
      --slack-webhook-file) SLACK_WEBHOOK_FILE=$value ;;
    esac
  done
}

# check VALUE REGEX MESSAGE
check() {
  [[ $1 =~ $2 ]] || usage_error "$3"
}

validate_args() {
  local project_re='^[a-z][a-z0-9-]{4,28}[a-z0-9]$'
  local region_re='^[a-z]+-[a-z]+[0-9]+$'
  local bucket_re='^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$'
  local name_re='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'
  local collection_re='^[A-Za-z0-9_-]{1,100}$'
  local url_re='^https?://[A-Za-z0-9.:/_-]+$'

  [[ -n $PROJECT ]] || usage_error "--project is required (the project id, e.g. my-meetup-project)"
  check "$PROJECT" "$project_re" \
    "--project '$PROJECT' is not a project id: 6-30 lowercase letters, digits or hyphens, starting with a letter"
  [[ -n $REGION ]] || usage_error "--region is required (e.g. europe-west1 or us-central1)"
  check "$REGION" "$region_re" \
    "--region '$REGION' is not a Google Cloud region name such as europe-west1 or us-central1"

  ZONE=${ZONE:-$REGION-b}
  DATA_BUCKET=${DATA_BUCKET:-$PROJECT-meetup-data}
  ERROR_BUCKET=${ERROR_BUCKET:-$PROJECT-meetup-error-logs}
  FIRESTORE_LOCATION=${FIRESTORE_LOCATION:-$REGION}

  check "$ZONE" "^$REGION-[a-z]\$" "--zone '$ZONE' is not a zone of region $REGION (e.g. $REGION-b)"
  check "$DATA_BUCKET" "$bucket_re" \
    "--data-bucket '$DATA_BUCKET' is not a bucket name: 3-63 of a-z, 0-9, - and _"
  check "$ERROR_BUCKET" "$bucket_re" \
    "--error-bucket '$ERROR_BUCKET' is not a bucket name: 3-63 of a-z, 0-9, - and _"
  [[ $DATA_BUCKET != "$ERROR_BUCKET" ]] || usage_error "--data-bucket and --error-bucket must differ"
  check "$MACHINE_TYPE" '^[a-z0-9]+(-[a-z0-9]+)+$' "--machine-type '$MACHINE_TYPE' is not a machine type such as e2-small"
  check "$VM_NAME" "$name_re" "--vm-name '$VM_NAME' is not an instance name: a-z, 0-9 and -"
  check "$IMAGE_FAMILY" "$name_re" "--image-family '$IMAGE_FAMILY' is not an image family such as debian-13"
  check "$TOPIC" '^[a-zA-Z][a-zA-Z0-9._~%+-]{2,254}$' "--topic '$TOPIC' is not a Pub/Sub topic name"
  check "$RUNTIME" '^python3[0-9]+$' "--runtime '$RUNTIME' is not a Python runtime such as python312"
  check "$FIRESTORE_LOCATION" '^[a-z]+[0-9]*(-[a-z]+[0-9]+)?$' \
    "--firestore-location '$FIRESTORE_LOCATION' is not a location such as $REGION or eur3"
  check "$MEMBERS_COLLECTION" "$collection_re" "--members-collection '$MEMBERS_COLLECTION' is not a collection name"
  check "$GROUPS_COLLECTION" "$collection_re" "--groups-collection '$GROUPS_COLLECTION' is not a collection name"
  check "$MEETUP_API_URL" "$url_re" "--meetup-api-url '$MEETUP_API_URL' is not an http(s) URL"
  check "$STREAM_URL" "$url_re" "--stream-url '$STREAM_URL' is not an http(s) URL"
}

# read_secret_value NAME ENV_VALUE FILE: sets SECRET_VALUE and SECRET_SOURCE.
# Never prints the value, not even in an error.
read_secret_value() {
  local name=$1 env_value=$2 file=$3
  SECRET_VALUE=
  SECRET_SOURCE=

  if [[ -n $file ]]; then
    [[ -z $env_value ]] || usage_error "both \$$name and a file for it are given: choose one"
    [[ -f $file && -r $file ]] || usage_error "cannot read the file for $name: $file"
    SECRET_VALUE=$(<"$file")
    SECRET_SOURCE="contents of $file"
  elif [[ -n $env_value ]]; then
    SECRET_VALUE=$env_value
    SECRET_SOURCE="value of \$$name"
  fi

  # Trailing newlines and blanks are what an editor leaves, not part of a key.
  SECRET_VALUE=${SECRET_VALUE%"${SECRET_VALUE##*[![:space:]]}"}
  if [[ -n $SECRET_SOURCE && -z $SECRET_VALUE ]]; then
    usage_error "$name is empty ($SECRET_SOURCE)"
  fi
  if [[ $SECRET_VALUE == *$'\n'* ]]; then
    usage_error "$name has more than one line ($SECRET_SOURCE; value not shown)"
  fi
}

read_secrets() {
  read_secret_value MEETUP_API_KEY "${MEETUP_API_KEY-}" "$MEETUP_API_KEY_FILE"
  MEETUP_KEY_VALUE=$SECRET_VALUE
  MEETUP_KEY_SOURCE=$SECRET_SOURCE

  read_secret_value SLACK_WEBHOOK_URL "${SLACK_WEBHOOK_URL-}" "$SLACK_WEBHOOK_FILE"
  SLACK_WEBHOOK_VALUE=$SECRET_VALUE
  SLACK_WEBHOOK_SOURCE=$SECRET_SOURCE
  if [[ -n $SLACK_WEBHOOK_VALUE && $SLACK_WEBHOOK_VALUE != https://* ]]; then
    usage_error "the Slack webhook URL ($SLACK_WEBHOOK_SOURCE) does not start with https:// (value not shown)"
  fi

  # No child process (gcloud included) needs them in its environment.
  unset MEETUP_API_KEY SLACK_WEBHOOK_URL
}

preflight() {
  if ((DRY_RUN)); then
    return 0
  fi

  command -v gcloud >/dev/null ||
    die "gcloud is not on PATH: install the Google Cloud CLI (or use --dry-run to see the plan)"
  command -v git >/dev/null || die "git is not on PATH: it lists the files shipped to the VM"
  gcloud auth print-access-token >/dev/null 2>&1 ||
    die "gcloud has no working credentials: run 'gcloud auth login' first"
  [[ -f $FUNCTIONS_SOURCE/main.py ]] || die "$FUNCTIONS_SOURCE/main.py is missing in $PWD"
  git ls-files --error-unmatch trigger_gcf.py requirements.txt >/dev/null 2>&1 ||
    die "trigger_gcf.py and requirements.txt must be tracked by git (git add them): only tracked files go to the VM"
}

service_account_email() {
  printf '%s@%s.iam.gserviceaccount.com' "$1" "$PROJECT"
}

enable_apis() {
  section "APIs"
  run gcloud services enable "${APIS[@]}"
}

ensure_bucket() {
  local bucket=$1
  if exists gcloud storage buckets describe "gs://$bucket"; then
    # Made elsewhere, perhaps without these settings: enforce them.
    run gcloud storage buckets update "gs://$bucket" \
      --uniform-bucket-level-access --public-access-prevention
  else
    run gcloud storage buckets create "gs://$bucket" --location="$REGION" \
      --uniform-bucket-level-access --public-access-prevention
  fi
}

create_buckets() {
  section "Buckets: data and error log (uniform access, no public access)"
  ensure_bucket "$DATA_BUCKET"
  ensure_bucket "$ERROR_BUCKET"
}

ensure_firestore_native() {
  section "Firestore in native mode"
  local database_type
  database_type=$(read_value "" gcloud firestore databases describe \
    --database='(default)' --format='value(type)' 2>/dev/null) || database_type=

  case $database_type in
    FIRESTORE_NATIVE) say "  the (default) database is in native mode" ;;
    "")
      run gcloud firestore databases create --database='(default)' \
        --location="$FIRESTORE_LOCATION" --type=firestore-native
      ;;
    *)
      die "the (default) Firestore database of $PROJECT is $database_type, not native mode;" \
        "a database's mode cannot be changed once it holds data: use another project"
      ;;
  esac
}

create_topic() {
  section "Pub/Sub topic for ERROR log entries"
  if ! exists gcloud pubsub topics describe "$TOPIC"; then
    run gcloud pubsub topics create "$TOPIC"
  fi
}

# store_secret SECRET VALUE SOURCE: creates the secret and adds VALUE as a new
# version unless it already is the latest one. VALUE only ever goes to gcloud's
# standard input (printf is a shell builtin, so no process argument holds it).
store_secret() {
  local secret=$1 value=$2 source=$3
  if ! exists gcloud secrets describe "$secret"; then
    run gcloud secrets create "$secret" --replication-policy=automatic
  fi

  if [[ -z $value ]]; then
    say "  no value given for $secret: it keeps its latest version"
    if ((!DRY_RUN)); then
      [[ -n $(gcloud secrets versions list "$secret" --filter=state:ENABLED \
        --limit=1 --format='value(name)') ]] ||
        die "secret $secret has no version yet: give its value (see --help, Secrets)"
    fi
    return 0
  fi

  say "? gcloud secrets versions access latest --secret=$secret   (compared with the new value; neither is printed)"
  if ((!DRY_RUN)); then
    local current
    current=$(gcloud secrets versions access latest --secret="$secret" 2>/dev/null) || current=
    if [[ $current == "$value" ]]; then
      say "  $secret is up to date"
      return 0
    fi
  fi

  say "+ gcloud secrets versions add $secret --data-file=-   < [$source, not shown]"
  if ((!DRY_RUN)); then
    printf '%s' "$value" | gcloud secrets versions add "$secret" --data-file=-
  fi
}

store_secrets() {
  section "Secrets"
  store_secret "$MEETUP_KEY_SECRET" "$MEETUP_KEY_VALUE" "$MEETUP_KEY_SOURCE"
  store_secret "$SLACK_WEBHOOK_SECRET" "$SLACK_WEBHOOK_VALUE" "$SLACK_WEBHOOK_SOURCE"
}

ensure_service_account() {
  local account=$1 description=$2
  if ! exists gcloud iam service-accounts describe "$(service_account_email "$account")"; then
    run gcloud iam service-accounts create "$account" --display-name="$description"
  fi
}

create_service_accounts() {
  section "Service accounts, one per role"
  ensure_service_account "$STREAM_ACCOUNT" "meetup-collector: save_stream_data"
  ensure_service_account "$PROFILE_ACCOUNT" "meetup-collector: profile functions"
  ensure_service_account "$SLACK_ACCOUNT" "meetup-collector: report_slack"
  ensure_service_account "$TRIGGER_ACCOUNT" "meetup-collector: error topic to report_slack"
  ensure_service_account "$VM_ACCOUNT" "meetup-collector: collector VM"
  ensure_service_account "$BUILD_ACCOUNT" "meetup-collector: function builds"
}

grant_on_project() {
  run_retrying gcloud projects add-iam-policy-binding "$PROJECT" \
    --member="$1" --role="$2" --condition=None --format=none
}

grant_on_bucket() {
  run_retrying gcloud storage buckets add-iam-policy-binding "gs://$1" \
    --member="$2" --role="$3" --format=none
}

grant_on_secret() {
  run_retrying gcloud secrets add-iam-policy-binding "$1" \
    --member="$2" --role="$3" --format=none
}

grant_iam() {
  section "IAM: least privilege per account"
  local stream profile slack vm build
  stream=serviceAccount:$(service_account_email "$STREAM_ACCOUNT")
  profile=serviceAccount:$(service_account_email "$PROFILE_ACCOUNT")
  slack=serviceAccount:$(service_account_email "$SLACK_ACCOUNT")
  vm=serviceAccount:$(service_account_email "$VM_ACCOUNT")
  build=serviceAccount:$(service_account_email "$BUILD_ACCOUNT")

  # save_stream_data: create objects in the data bucket only. Create-only
  # writes (if_generation_match=0) need nothing more: an existing object
  # answers 412 without any read permission.
  grant_on_bucket "$DATA_BUCKET" "$stream" roles/storage.objectCreator
  grant_on_project "$stream" roles/logging.logWriter

  # save_member_data, save_group_data: write documents, read the Meetup key.
  grant_on_project "$profile" roles/datastore.user
  grant_on_secret "$MEETUP_KEY_SECRET" "$profile" roles/secretmanager.secretAccessor
  grant_on_project "$profile" roles/logging.logWriter

  grant_on_secret "$SLACK_WEBHOOK_SECRET" "$slack" roles/secretmanager.secretAccessor
  grant_on_project "$slack" roles/logging.logWriter

  # The VM's invoker rights are granted on each function after its deploy.
  grant_on_project "$vm" roles/logging.logWriter

  # Google's recommended role for a build service account of its own, so that
  # builds do not run as the Compute Engine default account.
  grant_on_project "$build" roles/cloudbuild.builds.builder
}

deploy_functions() {
  section "Cloud Functions (gen2, private)"
  # ^;^ makes ";" the list separator, since ALLOWED_COLLECTIONS holds a comma.
  local env_vars="^;^ALLOWED_BUCKETS=$DATA_BUCKET"
  env_vars+=";ALLOWED_COLLECTIONS=$MEMBERS_COLLECTION,$GROUPS_COLLECTION"
  env_vars+=";MEETUP_API_URL=$MEETUP_API_URL;GOOGLE_CLOUD_PROJECT=$PROJECT"
  local common=(
    --gen2 --region="$REGION" --runtime="$RUNTIME" --source="$FUNCTIONS_SOURCE"
    --no-allow-unauthenticated
    --build-service-account="projects/$PROJECT/serviceAccounts/$(service_account_email "$BUILD_ACCOUNT")"
    --set-env-vars="$env_vars"
  )

  # Chunks of up to 10 MiB, written concurrently; several chunks in flight. It
  # needs no secret.
  run gcloud functions deploy save_stream_data "${common[@]}" \
    --entry-point=save_stream_data --trigger-http \
    --service-account="$(service_account_email "$STREAM_ACCOUNT")" \
    --memory=512Mi --cpu=1 --concurrency=8 --timeout=120s --max-instances=10

  # One profile request at a time under one Meetup key; calls may wait out
  # Meetup's rate limit, hence the longer timeout.
  local function_name
  for function_name in save_member_data save_group_data; do
    run gcloud functions deploy "$function_name" "${common[@]}" \
      --entry-point="$function_name" --trigger-http \
      --service-account="$(service_account_email "$PROFILE_ACCOUNT")" \
      --set-secrets="MEETUP_API_KEY=$MEETUP_KEY_SECRET:latest" \
      --memory=512Mi --concurrency=1 --timeout=300s --max-instances=3
  done

  # One instance taking one event at a time keeps to Slack's pace of about one
  # message a second. --retry: the function raises to have an event delivered
  # again when Slack asks it to wait.
  run gcloud functions deploy "$SLACK_FUNCTION" "${common[@]}" \
    --entry-point="$SLACK_FUNCTION" --trigger-topic="$TOPIC" --retry \
    --trigger-service-account="$(service_account_email "$TRIGGER_ACCOUNT")" \
    --service-account="$(service_account_email "$SLACK_ACCOUNT")" \
    --set-secrets="SLACK_WEBHOOK_URL=$SLACK_WEBHOOK_SECRET:latest" \
    --ingress-settings=internal-only \
    --memory=512Mi --concurrency=1 --timeout=60s --max-instances=1
}

grant_invokers() {
  section "Invokers: roles/run.invoker on each function's Cloud Run service"
  local vm trigger function_name
  vm=serviceAccount:$(service_account_email "$VM_ACCOUNT")
  trigger=serviceAccount:$(service_account_email "$TRIGGER_ACCOUNT")

  for function_name in "${HTTP_FUNCTIONS[@]}"; do
    run_retrying gcloud functions add-invoker-policy-binding "$function_name" \
      --region="$REGION" --member="$vm" --format=none
  done
  run_retrying gcloud functions add-invoker-policy-binding "$SLACK_FUNCTION" \
    --region="$REGION" --member="$trigger" --format=none
}

# ensure_sink NAME DESTINATION FILTER: creates the sink, or brings an existing
# one to this destination and filter. Sets SINK_WRITER to its writer identity.
ensure_sink() {
  local sink=$1 destination=$2 filter=$3
  if exists gcloud logging sinks describe "$sink"; then
    run gcloud logging sinks update "$sink" "$destination" --log-filter="$filter"
  else
    run gcloud logging sinks create "$sink" "$destination" --log-filter="$filter" \
      --description="meetup-collector: log entries of severity ERROR and above"
  fi
  SINK_WRITER=$(read_value "serviceAccount:<writer identity of $sink>" \
    gcloud logging sinks describe "$sink" --format='value(writerIdentity)')
}

create_sinks() {
  section "Log sinks: ERROR and above to the error bucket and to the topic"
  local errors='severity>=ERROR'
  # report_slack's own failures must never reach the topic that triggers it, or
  # one failure would feed the next. Gen2 functions log as cloud_run_revision of
  # their service; gen1 as cloud_function. The parentheses are needed: in this
  # query language OR binds tighter than AND.
  local not_report_slack="NOT (resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"$SLACK_SERVICE\")"
  not_report_slack+=" AND NOT (resource.type=\"cloud_function\" AND resource.labels.function_name=\"$SLACK_FUNCTION\")"

  ensure_sink "$BUCKET_SINK" "storage.googleapis.com/$ERROR_BUCKET" "$errors"
  grant_on_bucket "$ERROR_BUCKET" "$SINK_WRITER" roles/storage.objectCreator

  ensure_sink "$TOPIC_SINK" "pubsub.googleapis.com/projects/$PROJECT/topics/$TOPIC" \
    "$errors AND $not_report_slack"
  run_retrying gcloud pubsub topics add-iam-policy-binding "$TOPIC" \
    --member="$SINK_WRITER" --role=roles/pubsub.publisher --format=none
}

create_vm() {
  section "VM"
  # Default network with an ephemeral external IP: the collector must reach the
  # stream servers on the internet, and there is no Cloud NAT to do it without
  # one. Nothing listens on it; only SSH (for the setup below) comes in.
  if ! exists gcloud compute instances describe "$VM_NAME" --zone="$ZONE"; then
    run gcloud compute instances create "$VM_NAME" --zone="$ZONE" \
      --machine-type="$MACHINE_TYPE" \
      --image-family="$IMAGE_FAMILY" --image-project=debian-cloud \
      --service-account="$(service_account_email "$VM_ACCOUNT")" --scopes=cloud-platform \
      --shielded-secure-boot --shielded-vtpm --shielded-integrity-monitoring \
      --labels=app=meetup-collector
  fi
}

# render_vm_config URL_STREAM URL_MEMBER URL_GROUP: sets VM_CONFIG, the
# trigger's config.json (see config.example.json; unset keys keep their
# defaults). No secret goes in it: the VM calls the functions with identity
# tokens of its service account.
render_vm_config() {
  local streams=${STREAM_URL%/}/2
  read -r -d '' VM_CONFIG <<EOF || true
{
  "functions": {
    "save_stream_data": "$1",
    "save_member_data": "$2",
    "save_group_data": "$3"
  },
  "bucket": "$DATA_BUCKET",
  "streams": {
    "rsvps": {"url": "$streams/rsvps"},
    "open_events": {"url": "$streams/open_events"},
    "event_comments": {"url": "$streams/event_comments"},
    "photos": {"url": "$streams/photos"},
    "open_venues": {"url": "$streams/open_venues?trickle"}
  },
  "collections": {"members": "$MEMBERS_COLLECTION", "groups": "$GROUPS_COLLECTION"},
  "state_dir": "$VM_STATE_DIR",
  "auth": {"mode": "google_id_token"},
  "logging": {"destination": "cloud"}
}
EOF
}

setup_vm() {
  section "Collector on the VM (vm-setup.sh over ssh)"
  local urls=() function_name
  for function_name in "${HTTP_FUNCTIONS[@]}"; do
    urls+=("$(read_value "https://<url of $function_name>" gcloud functions describe \
      "$function_name" --region="$REGION" --format='value(serviceConfig.uri)')")
  done
  render_vm_config "${urls[@]}"

  local workdir='<temporary folder>'
  if ((!DRY_RUN)); then
    workdir=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: workdir is local
    trap "rm -rf '$workdir'" EXIT
  fi
  local bundle=$workdir/meetup-collector.tar.gz
  local config=$workdir/meetup-collector-config.json

  say "  $VM_CONFIG_PATH will hold:"
  say "$VM_CONFIG"
  say "+ git ls-files -z | tar --null -T - -czf $bundle   (the repository's tracked files)"
  if ((!DRY_RUN)); then
    printf '%s\n' "$VM_CONFIG" >"$config"
    git ls-files -z | tar --null -T - -czf "$bundle"
  fi

  local ssh_target=(gcloud compute ssh "$VM_NAME" --zone="$ZONE" "${SSH_FLAGS[@]}")
  shell_quote "${ssh_target[@]}" --command=true
  say "? $REPLY   (repeated until the VM answers, for up to 10 minutes)"
  if ((!DRY_RUN)); then
    local attempt
    for ((attempt = 1; ; attempt++)); do
      "${ssh_target[@]}" --command=true >/dev/null 2>&1 && break
      ((attempt < 20)) || die "the VM $VM_NAME does not answer ssh: see deploy/README.md (SSH access)"
      sleep 30
    done
  fi

  run gcloud compute scp "$bundle" "$config" deploy/vm-setup.sh "$VM_NAME:~/" \
    --zone="$ZONE" "${SSH_FLAGS[@]}"
  run "${ssh_target[@]}" --command="sudo bash vm-setup.sh \
--bundle meetup-collector.tar.gz --config meetup-collector-config.json \
&& rm -f vm-setup.sh meetup-collector.tar.gz meetup-collector-config.json"
}

main() {
  parse_args "$@"
  validate_args
  read_secrets

  # The relative paths below (functions/, deploy/vm-setup.sh) start here.
  local script_dir=${BASH_SOURCE[0]%/*}
  [[ $script_dir != "${BASH_SOURCE[0]}" ]] || script_dir=.
  cd "$script_dir/.."
  preflight

  if ((DRY_RUN)); then
    say "# Dry run: the commands a deploy of project $PROJECT would run; nothing is changed."
  else
    say "# Deploying the meetup.com collector to project $PROJECT."
  fi
  say "# '+' lines change something; '?' lines only read (in a dry run they find nothing)."
  say "+ export CLOUDSDK_CORE_PROJECT=$PROJECT CLOUDSDK_CORE_DISABLE_PROMPTS=1"
  export CLOUDSDK_CORE_PROJECT=$PROJECT CLOUDSDK_CORE_DISABLE_PROMPTS=1

  enable_apis
  create_buckets
  ensure_firestore_native
  create_topic
  store_secrets
  create_service_accounts
  grant_iam
  deploy_functions
  grant_invokers
  create_sinks
  create_vm
  setup_vm

  section "Done"
  if ((DRY_RUN)); then
    say "Dry run complete: nothing was changed."
  else
    say "Deployed. The collector's logs: gcloud compute ssh $VM_NAME --zone=$ZONE" \
      "--command='journalctl -u meetup-collector -f'"
  fi
}

main "$@"
