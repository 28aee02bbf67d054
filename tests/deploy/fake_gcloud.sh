#!/usr/bin/env bash
# A stand-in for the Google Cloud CLI in the deploy tests. It records every call
# (one line of arguments each) in $FAKE_GCLOUD_STATE/calls.log and remembers
# what a create made, so that a describe on a later run finds it, the way the
# real project would. Secret versions keep the data read from standard input.
set -euo pipefail

state=${FAKE_GCLOUD_STATE:?FAKE_GCLOUD_STATE must name a folder}
touch "$state/resources"
printf '%s\n' "$*" >>"$state/calls.log"

words=()
secret_flag=
for arg in "$@"; do
  case $arg in
    --secret=*) secret_flag=${arg#--secret=} ;;
    -*) ;;
    *) words+=("$arg") ;;
  esac
done

verb_at=-1
for i in "${!words[@]}"; do
  case ${words[i]} in
    describe | create | deploy | add | access | list | update | enable | ssh | scp | \
      print-access-token | add-iam-policy-binding | add-invoker-policy-binding)
      verb_at=$i
      break
      ;;
  esac
done
((verb_at >= 0)) || {
  echo "fake gcloud: no verb in: $*" >&2
  exit 2
}

group=${words[*]:0:verb_at}
verb=${words[verb_at]}
name=${words[verb_at + 1]-}
if [[ $group == "iam service-accounts" ]]; then
  name=${name%%@*} # describe takes the email, create the account id
fi
key="$group $name"

case "$group $verb" in
  "secrets versions add")
    cat >"$state/secret-$name"
    ;;
  "secrets versions access")
    cat "$state/secret-$secret_flag" 2>/dev/null || exit 1
    ;;
  "secrets versions list")
    [[ -f $state/secret-$name ]] && echo 1
    ;;
  *" describe")
    grep -qxF "$key" "$state/resources" || {
      echo "ERROR: (gcloud) NOT_FOUND: $key" >&2
      exit 1
    }
    case $group in
      functions) echo "https://${name//_/-}-fake.a.run.app" ;;
      "logging sinks") echo "serviceAccount:$name-writer@fake-logging.iam.gserviceaccount.com" ;;
      "firestore databases") echo "FIRESTORE_NATIVE" ;;
    esac
    ;;
  *" create" | "functions deploy")
    grep -qxF "$key" "$state/resources" || echo "$key" >>"$state/resources"
    ;;
  "compute scp")
    # Keep what would go to the VM, for the tests to look at.
    mkdir -p "$state/scp"
    for source in "${words[@]:verb_at+1}"; do
      if [[ -f $source ]]; then cp "$source" "$state/scp/"; fi
    done
    ;;
  "auth print-access-token")
    echo "fake-token"
    ;;
esac
exit 0
