"""Tests of deploy/: the plan that deploy.sh --dry-run prints, its refusal of bad
input, its idempotence against a recording stand-in for gcloud, the systemd unit,
and shellcheck over the scripts.

The dry runs get a PATH without gcloud (and without any other program), which
proves that a dry run neither needs nor calls the Cloud CLI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.config import FunctionUrls, config_from_dict

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO / "deploy"
DEPLOY_SCRIPT = DEPLOY_DIR / "deploy.sh"
VM_SETUP_SCRIPT = DEPLOY_DIR / "vm-setup.sh"
UNIT_FILE = DEPLOY_DIR / "meetup-collector.service"
FAKE_GCLOUD = Path(__file__).with_name("fake_gcloud.sh")

BASH = shutil.which("bash") or "/bin/bash"

PROJECT = "demo-meetup-123"
REGION = "europe-west1"
TOPIC = "meetup-error-logs"
DATA_BUCKET = f"{PROJECT}-meetup-data"
ERROR_BUCKET = f"{PROJECT}-meetup-error-logs"

FAKE_API_KEY = "mk-3b7f-DO-NOT-PRINT-9c1d"
FAKE_WEBHOOK_HOST = "webhook.example.invalid"
FAKE_WEBHOOK = f"https://{FAKE_WEBHOOK_HOST}/services/fake/DoNotPrint42"

HTTP_FUNCTIONS = ("save_stream_data", "save_member_data", "save_group_data")
ALL_FUNCTIONS = (*HTTP_FUNCTIONS, "report_slack")


def account(name: str) -> str:
    return f"serviceAccount:{name}@{PROJECT}.iam.gserviceaccount.com"


STREAM_SA = account("meetup-stream-fn")
PROFILE_SA = account("meetup-profile-fn")
SLACK_SA = account("meetup-slack-fn")
TRIGGER_SA = account("meetup-error-trigger")
VM_SA = account("meetup-collector-vm")
BUILD_SA = account("meetup-fn-build")


@dataclass
class Step:
    """One line of the printed plan: "+" changes something, "?" only reads."""

    kind: str
    argv: list[str]

    def flag(self, name: str) -> str | None:
        prefix = f"--{name}="
        values = [arg[len(prefix) :] for arg in self.argv if arg.startswith(prefix)]
        return values[-1] if values else None

    def has(self, name: str) -> bool:
        return f"--{name}" in self.argv or self.flag(name) is not None

    def positionals(self) -> list[str]:
        return [arg for arg in self.argv if not arg.startswith("-")]


def parse_plan(text: str) -> list[Step]:
    steps = []
    for line in text.splitlines():
        if line.startswith(("+ ", "? ")):
            command = line[2:].split("   (")[0]  # drop a trailing note
            steps.append(Step(line[0], shlex.split(command)))
    return steps


def gcloud(steps: list[Step], *group: str, kind: str | None = None) -> list[Step]:
    """The gcloud steps whose command starts with `group`."""
    head = ["gcloud", *group]
    return [
        step
        for step in steps
        if step.argv[: len(head)] == head and kind in (None, step.kind)
    ]


def bindings(steps: list[Step]) -> list[tuple[str, str, str, str]]:
    """(resource kind, resource, member, role) of every IAM grant in the plan."""
    found = []
    for step in steps:
        if step.kind != "+" or step.argv[0] != "gcloud":
            continue
        if "add-iam-policy-binding" in step.argv:
            verb_at = step.argv.index("add-iam-policy-binding")
            kind = " ".join(step.argv[1:verb_at])
            resource = step.argv[verb_at + 1]
            found.append((kind, resource, step.flag("member"), step.flag("role")))
        elif step.argv[1:3] == ["functions", "add-invoker-policy-binding"]:
            resource = step.argv[3]
            found.append(
                ("function", resource, step.flag("member"), "roles/run.invoker")
            )
    return found


def empty_bin(tmp_path: Path) -> Path:
    path = tmp_path / "empty-bin"
    path.mkdir(exist_ok=True)
    return path


def run_deploy(
    *args: str, path: Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(cwd / "deploy" / "deploy.sh"), *args],
        env={"PATH": str(path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def dry_run(tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    secrets = {"MEETUP_API_KEY": FAKE_API_KEY, "SLACK_WEBHOOK_URL": FAKE_WEBHOOK}
    return run_deploy(
        "--dry-run",
        f"--project={PROJECT}",
        "--region",
        REGION,
        *extra,
        path=empty_bin(tmp_path),
        env=secrets if env is None else env,
    )


@pytest.fixture(scope="module")
def plan_run(tmp_path_factory: pytest.TempPathFactory):
    return dry_run(tmp_path_factory.mktemp("plan"))


@pytest.fixture(scope="module")
def plan(plan_run) -> list[Step]:
    assert plan_run.returncode == 0, plan_run.stderr
    return parse_plan(plan_run.stdout)


# The dry run itself


def test_dry_run_succeeds_with_no_gcloud_on_path(plan_run):
    assert plan_run.returncode == 0, plan_run.stderr
    assert plan_run.stderr == ""
    assert "Dry run complete: nothing was changed." in plan_run.stdout


def test_dry_run_never_calls_gcloud_even_when_it_is_there(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tripwire = tmp_path / "gcloud-was-called"
    fake = bin_dir / "gcloud"
    fake.write_text(f"#!{BASH}\n: > {shlex.quote(str(tripwire))}\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    result = run_deploy(
        "--dry-run",
        "--project",
        PROJECT,
        "--region",
        REGION,
        path=bin_dir,
        env={"MEETUP_API_KEY": FAKE_API_KEY},
    )

    assert result.returncode == 0, result.stderr
    assert not tripwire.exists()


def test_a_real_run_without_gcloud_stops_with_a_clear_message(tmp_path):
    result = run_deploy(
        "--project", PROJECT, "--region", REGION, path=empty_bin(tmp_path)
    )

    assert result.returncode != 0
    assert "gcloud is not on PATH" in result.stderr


def test_every_api_is_enabled_first(plan):
    enables = gcloud(plan, "services", "enable")
    assert len(enables) == 1
    first_gcloud = next(step for step in plan if step.argv[0] == "gcloud")
    assert first_gcloud is enables[0]
    apis = [
        "cloudfunctions",
        "run",
        "cloudbuild",
        "artifactregistry",
        "eventarc",
        "pubsub",
        "storage",
        "firestore",
        "logging",
        "secretmanager",
        "compute",
        "iam",
    ]
    assert set(enables[0].positionals()[3:]) == {
        f"{api}.googleapis.com" for api in apis
    }


# Functions


def test_every_function_is_deployed_private_gen2_from_the_functions_folder(plan):
    deploys = gcloud(plan, "functions", "deploy")

    assert sorted(step.argv[3] for step in deploys) == sorted(ALL_FUNCTIONS)
    for step in deploys:
        name = step.argv[3]
        assert "--gen2" in step.argv, name
        assert "--no-allow-unauthenticated" in step.argv, name
        assert "--allow-unauthenticated" not in step.argv, name
        assert step.flag("source") == "functions", name
        assert step.flag("entry-point") == name
        assert re.fullmatch(r"python3\d+", step.flag("runtime") or ""), name
        assert step.flag("region") == REGION
        assert step.flag("service-account"), name
        assert step.flag("memory") and step.flag("timeout"), name
        assert step.flag("max-instances") and step.flag("concurrency"), name
        assert step.flag("build-service-account") == (
            f"projects/{PROJECT}/serviceAccounts/{BUILD_SA.split(':')[1]}"
        )


def test_http_functions_and_report_slack_have_their_triggers_and_limits(plan):
    deploys = {step.argv[3]: step for step in gcloud(plan, "functions", "deploy")}

    for name in HTTP_FUNCTIONS:
        assert "--trigger-http" in deploys[name].argv
        assert not deploys[name].has("trigger-topic")
    stream_email = STREAM_SA.split(":")[1]
    profile_email = PROFILE_SA.split(":")[1]
    assert deploys["save_stream_data"].flag("service-account") == stream_email
    assert deploys["save_member_data"].flag("service-account") == profile_email
    assert deploys["save_group_data"].flag("service-account") == profile_email

    slack = deploys["report_slack"]
    assert slack.flag("trigger-topic") == TOPIC
    assert "--trigger-http" not in slack.argv
    assert slack.flag("max-instances") == "1"
    assert slack.flag("concurrency") == "1"
    assert slack.flag("service-account") == SLACK_SA.split(":")[1]
    assert slack.flag("trigger-service-account") == TRIGGER_SA.split(":")[1]


def test_non_secret_settings_go_in_env_vars(plan):
    for step in gcloud(plan, "functions", "deploy"):
        env_vars = step.flag("set-env-vars")
        assert env_vars and env_vars.startswith("^;^"), step.argv[3]
        settings = dict(item.split("=", 1) for item in env_vars[3:].split(";"))
        assert settings == {
            "ALLOWED_BUCKETS": DATA_BUCKET,
            "ALLOWED_COLLECTIONS": "members,groups",
            "MEETUP_API_URL": "https://api.meetup.com",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }


def test_secrets_reach_functions_only_through_set_secrets(plan):
    for step in gcloud(plan, "functions", "deploy"):
        name = step.argv[3]
        env_vars = step.flag("set-env-vars") or ""
        assert "MEETUP_API_KEY" not in env_vars and "SLACK" not in env_vars, name
        assert not step.has("update-env-vars") and not step.has("env-vars-file")

        expected = {
            "save_stream_data": None,
            "save_member_data": "MEETUP_API_KEY=meetup-api-key:latest",
            "save_group_data": "MEETUP_API_KEY=meetup-api-key:latest",
            "report_slack": "SLACK_WEBHOOK_URL=slack-webhook-url:latest",
        }
        assert step.flag("set-secrets") == expected[name], name


def test_secret_values_from_the_environment_are_never_printed(plan_run):
    output = plan_run.stdout + plan_run.stderr

    assert FAKE_API_KEY not in output
    assert FAKE_WEBHOOK not in output
    assert FAKE_WEBHOOK_HOST not in output
    assert "[value of $MEETUP_API_KEY, not shown]" in output
    assert "[value of $SLACK_WEBHOOK_URL, not shown]" in output


def test_secret_values_from_files_are_never_printed(tmp_path):
    key_file = tmp_path / "meetup-key"
    key_file.write_text(FAKE_API_KEY + "\n")
    webhook_file = tmp_path / "slack-webhook"
    webhook_file.write_text(FAKE_WEBHOOK)

    result = dry_run(
        tmp_path,
        f"--meetup-api-key-file={key_file}",
        "--slack-webhook-file",
        str(webhook_file),
        env={},
    )

    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert FAKE_API_KEY not in output and FAKE_WEBHOOK not in output
    assert f"[contents of {key_file}, not shown]" in output
    adds = gcloud(parse_plan(result.stdout), "secrets", "versions", "add")
    assert [step.argv[4] for step in adds] == ["meetup-api-key", "slack-webhook-url"]
    assert all(step.flag("data-file") == "-" for step in adds)


def test_without_secret_values_the_plan_keeps_the_latest_versions(tmp_path):
    result = dry_run(tmp_path, env={})

    assert result.returncode == 0, result.stderr
    assert gcloud(parse_plan(result.stdout), "secrets", "versions", "add") == []
    assert "no value given for meetup-api-key" in result.stdout


@pytest.mark.parametrize(
    "secret_args",
    [
        [f"--meetup-api-key={FAKE_API_KEY}"],
        ["--meetup-api-key", FAKE_API_KEY],
        [f"--slack-webhook-url={FAKE_WEBHOOK}"],
        [FAKE_API_KEY],
    ],
)
def test_a_secret_on_the_command_line_is_refused_and_not_echoed(tmp_path, secret_args):
    result = dry_run(tmp_path, *secret_args, env={})

    assert result.returncode == 2
    assert result.stdout == ""
    assert FAKE_API_KEY not in result.stderr and FAKE_WEBHOOK not in result.stderr
    assert "error:" in result.stderr


# Least privilege


def test_no_basic_or_admin_roles_anywhere(plan_run, plan):
    for role in ("roles/owner", "roles/editor", "roles/viewer", "storage.admin"):
        assert role not in plan_run.stdout
    assert all(not role.endswith(".admin") for *_, role in bindings(plan))


def test_project_wide_roles_are_only_the_unavoidable_ones(plan):
    project_roles = {
        (member, role)
        for kind, resource, member, role in bindings(plan)
        if kind == "projects"
    }
    assert all(
        resource == PROJECT
        for kind, resource, *_ in bindings(plan)
        if kind == "projects"
    )
    assert project_roles == {
        (STREAM_SA, "roles/logging.logWriter"),
        (PROFILE_SA, "roles/datastore.user"),
        (PROFILE_SA, "roles/logging.logWriter"),
        (SLACK_SA, "roles/logging.logWriter"),
        (VM_SA, "roles/logging.logWriter"),
        (BUILD_SA, "roles/cloudbuild.builds.builder"),
    }


def test_storage_roles_are_bound_on_buckets_not_the_project(plan):
    storage = [grant for grant in bindings(plan) if "roles/storage." in grant[3]]

    assert all(kind == "storage buckets" for kind, *_ in storage)
    assert {role for *_, role in storage} == {"roles/storage.objectCreator"}
    assert [grant for grant in storage if grant[2] == STREAM_SA] == [
        (
            "storage buckets",
            f"gs://{DATA_BUCKET}",
            STREAM_SA,
            "roles/storage.objectCreator",
        )
    ]


def test_each_secret_is_readable_only_by_its_function_account(plan):
    secret_grants = [grant for grant in bindings(plan) if grant[0] == "secrets"]

    assert sorted(secret_grants) == sorted(
        [
            (
                "secrets",
                "meetup-api-key",
                PROFILE_SA,
                "roles/secretmanager.secretAccessor",
            ),
            (
                "secrets",
                "slack-webhook-url",
                SLACK_SA,
                "roles/secretmanager.secretAccessor",
            ),
        ]
    )


def test_the_vm_may_invoke_exactly_the_three_http_functions(plan):
    invokers = [grant for grant in bindings(plan) if grant[0] == "function"]

    assert sorted(name for _, name, member, _ in invokers if member == VM_SA) == sorted(
        HTTP_FUNCTIONS
    )
    assert [
        (name, member) for _, name, member, _ in invokers if name == "report_slack"
    ] == [("report_slack", TRIGGER_SA)]


def test_grants_follow_the_creation_of_what_they_grant_on(plan):
    def first(group: tuple[str, ...], name: str) -> int:
        return next(
            index
            for index, step in enumerate(plan)
            if step.argv[: len(group) + 1] == ["gcloud", *group] and name in step.argv
        )

    for function_name in ALL_FUNCTIONS:
        deployed = first(("functions", "deploy"), function_name)
        invoker = first(("functions", "add-invoker-policy-binding"), function_name)
        assert deployed < invoker
    secret_created = first(("secrets", "create"), "meetup-api-key")
    secret_granted = first(("secrets", "add-iam-policy-binding"), "meetup-api-key")
    deployed = first(("functions", "deploy"), "save_member_data")
    assert secret_created < secret_granted < deployed


# Log sinks


def sinks(plan: list[Step]) -> dict[str, Step]:
    return {step.argv[4]: step for step in gcloud(plan, "logging", "sinks", "create")}


def test_the_error_bucket_sink_takes_severity_error_and_above(plan):
    sink = sinks(plan)["meetup-errors-to-bucket"]

    assert sink.argv[5] == f"storage.googleapis.com/{ERROR_BUCKET}"
    assert sink.flag("log-filter") == "severity>=ERROR"


def test_the_topic_sink_excludes_report_slacks_own_logs(plan):
    sink = sinks(plan)["meetup-errors-to-slack"]
    log_filter = sink.flag("log-filter") or ""

    assert sink.argv[5] == f"pubsub.googleapis.com/projects/{PROJECT}/topics/{TOPIC}"
    assert log_filter.startswith("severity>=ERROR AND ")
    # OR binds tighter than AND in the Logging query language: none may slip in.
    assert " OR " not in log_filter
    assert (
        'NOT (resource.type="cloud_run_revision" AND '
        'resource.labels.service_name="report-slack")'
    ) in log_filter
    assert (
        'NOT (resource.type="cloud_function" AND '
        'resource.labels.function_name="report_slack")'
    ) in log_filter


def test_each_sink_writer_gets_exactly_the_right_it_needs(plan):
    for sink_name in ("meetup-errors-to-bucket", "meetup-errors-to-slack"):
        describe = [
            step
            for step in gcloud(plan, "logging", "sinks", "describe", sink_name)
            if step.flag("format") == "value(writerIdentity)"
        ]
        assert len(describe) == 1, sink_name

    writer_grants = [grant for grant in bindings(plan) if "writer identity" in grant[2]]
    assert sorted(writer_grants) == sorted(
        [
            (
                "storage buckets",
                f"gs://{ERROR_BUCKET}",
                "serviceAccount:<writer identity of meetup-errors-to-bucket>",
                "roles/storage.objectCreator",
            ),
            (
                "pubsub topics",
                TOPIC,
                "serviceAccount:<writer identity of meetup-errors-to-slack>",
                "roles/pubsub.publisher",
            ),
        ]
    )


# Buckets, Firestore, VM


def test_buckets_have_uniform_access_and_public_access_prevention(plan):
    creates = gcloud(plan, "storage", "buckets", "create")

    assert sorted(step.argv[4] for step in creates) == sorted(
        [f"gs://{DATA_BUCKET}", f"gs://{ERROR_BUCKET}"]
    )
    for step in creates:
        assert "--uniform-bucket-level-access" in step.argv
        assert "--public-access-prevention" in step.argv
        assert step.flag("location") == REGION


def test_firestore_is_checked_for_native_mode_and_created_native(plan):
    describe = gcloud(plan, "firestore", "databases", "describe")
    create = gcloud(plan, "firestore", "databases", "create")

    assert describe and describe[0].flag("format") == "value(type)"
    assert len(create) == 1 and create[0].flag("type") == "firestore-native"
    assert plan.index(describe[0]) < plan.index(create[0])


def test_the_vm_runs_as_its_own_service_account(plan):
    create = gcloud(plan, "compute", "instances", "create")

    assert len(create) == 1
    vm = create[0]
    assert vm.argv[4] == "meetup-collector"
    assert vm.flag("service-account") == VM_SA.split(":")[1]
    assert vm.flag("scopes") == "cloud-platform"
    assert vm.flag("machine-type") == "e2-small"
    assert vm.flag("zone") == f"{REGION}-b"
    assert vm.flag("image-project") == "debian-cloud"
    assert not vm.has("no-address")  # it must reach the stream servers


def test_the_vm_gets_its_config_and_runs_vm_setup(plan_run, plan):
    for function_name in HTTP_FUNCTIONS:
        describe = gcloud(plan, "functions", "describe", function_name)
        assert describe[0].flag("format") == "value(serviceConfig.uri)"

    config_text = plan_run.stdout.split("config.json will hold:\n", 1)[1]
    config = json.loads(config_text[: config_text.index("\n}\n") + 2])
    assert config["auth"] == {"mode": "google_id_token"}
    assert config["logging"] == {"destination": "cloud"}
    assert config["state_dir"] == "/var/lib/meetup-collector"
    assert config["bucket"] == DATA_BUCKET
    assert set(config["functions"]) == set(HTTP_FUNCTIONS)
    assert config["streams"]["open_venues"] == {
        "url": "http://stream.meetup.com/2/open_venues?trickle"
    }
    assert FAKE_API_KEY not in config_text

    ssh = gcloud(plan, "compute", "ssh", kind="+")
    assert len(ssh) == 1 and "sudo bash vm-setup.sh" in ssh[0].flag("command")
    scp = gcloud(plan, "compute", "scp")
    assert "deploy/vm-setup.sh" in scp[0].argv


def test_names_derive_from_the_project_and_flags_override_them(tmp_path):
    result = dry_run(
        tmp_path,
        "--zone=europe-west1-d",
        "--data-bucket=my-items",
        "--error-bucket=my-errors",
        "--machine-type=e2-medium",
        "--vm-name=collector-2",
        "--topic=my-errors-topic",
        "--runtime=python313",
    )

    assert result.returncode == 0, result.stderr
    steps = parse_plan(result.stdout)
    assert {step.argv[4] for step in gcloud(steps, "storage", "buckets", "create")} == {
        "gs://my-items",
        "gs://my-errors",
    }
    vm = gcloud(steps, "compute", "instances", "create")[0]
    assert vm.argv[4] == "collector-2"
    assert vm.flag("zone") == "europe-west1-d"
    assert vm.flag("machine-type") == "e2-medium"
    deploys = gcloud(steps, "functions", "deploy")
    assert {step.flag("runtime") for step in deploys} == {"python313"}
    assert "ALLOWED_BUCKETS=my-items;" in deploys[0].flag("set-env-vars")


# Idempotence


GUARDED_CREATES = {
    # create command -> the guard that must come before it
    ("storage", "buckets"): ("storage", "buckets", "describe"),
    ("pubsub", "topics"): ("pubsub", "topics", "describe"),
    ("secrets",): ("secrets", "describe"),
    ("iam", "service-accounts"): ("iam", "service-accounts", "describe"),
    ("logging", "sinks"): ("logging", "sinks", "describe"),
    ("compute", "instances"): ("compute", "instances", "describe"),
    ("firestore", "databases"): ("firestore", "databases", "describe"),
}


def test_every_create_is_guarded_by_a_describe_before_it(plan):
    creates = [step for step in plan if step.kind == "+" and "create" in step.argv[:4]]
    assert len(creates) >= 12

    for step in creates:
        create_at = step.argv.index("create")
        guard_command = ["gcloud", *GUARDED_CREATES[tuple(step.argv[1:create_at])]]
        # The created resource's name (Firestore's database is a flag instead);
        # a service account is created by id and described by email.
        name = step.argv[create_at + 1]
        names = {name, f"{name}@{PROJECT}.iam.gserviceaccount.com"}
        guards = [
            earlier
            for earlier in plan[: plan.index(step)]
            if earlier.kind == "?"
            and earlier.argv[: len(guard_command)] == guard_command
            and (name.startswith("-") or names & set(earlier.argv))
        ]
        assert guards, f"no guard before: {shlex.join(step.argv)}"


def test_every_changing_command_is_a_guarded_create_or_idempotent(plan):
    idempotent = {
        "enable",
        "add-iam-policy-binding",
        "add-invoker-policy-binding",
        "deploy",
        "update",
        "scp",
        "ssh",
        "add",  # secrets versions add: only after comparing with the latest
    }
    for step in plan:
        if step.kind != "+" or step.argv[0] != "gcloud":
            continue
        verbs = set(step.argv[1:5])
        assert "create" in verbs or verbs & idempotent, shlex.join(step.argv)
        assert "delete" not in verbs and "remove" not in " ".join(step.argv)


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    """A git work tree with deploy/ and just enough of the project to ship."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the VM bundle is made from git ls-files")

    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / "functions").mkdir()
    for script in (DEPLOY_SCRIPT, VM_SETUP_SCRIPT):
        shutil.copy2(script, repo / "deploy" / script.name)
    (repo / "functions" / "main.py").write_text("# the four entry points\n")
    (repo / "trigger_gcf.py").write_text("# the collector\n")
    (repo / "requirements.txt").write_text("requests\n")
    (repo / "local-notes.txt").write_text("untracked: must not reach the VM\n")

    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run(
        [*git, "add", "deploy", "functions", "trigger_gcf.py", "requirements.txt"],
        check=True,
    )
    return repo


def real_run(repo: Path, state: Path, **secrets: str):
    bin_dir = state.parent / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "gcloud"
    if not fake.exists():
        shutil.copy2(FAKE_GCLOUD, fake)
    (state / "calls.log").unlink(missing_ok=True)

    result = run_deploy(
        "--project",
        PROJECT,
        "--region",
        REGION,
        path=Path(f"{bin_dir}{os.pathsep}{os.environ['PATH']}"),
        env={"FAKE_GCLOUD_STATE": str(state), "HOME": str(state.parent), **secrets},
        cwd=repo,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    calls = (state / "calls.log").read_text().splitlines()
    return result, calls


def test_a_second_run_creates_nothing_and_keeps_the_secrets(small_repo, tmp_path, plan):
    state = tmp_path / "fake-project"
    state.mkdir()
    secrets = {"MEETUP_API_KEY": FAKE_API_KEY, "SLACK_WEBHOOK_URL": FAKE_WEBHOOK}

    first, first_calls = real_run(small_repo, state, **secrets)
    second, second_calls = real_run(small_repo, state, **secrets)

    planned_creates = [
        step for step in plan if step.kind == "+" and "create" in step.argv
    ]
    assert sum(" create " in call for call in first_calls) == len(planned_creates)
    assert [call for call in second_calls if " create " in call] == []
    assert [call for call in second_calls if "versions add" in call] == []
    assert (state / "secret-meetup-api-key").read_text() == FAKE_API_KEY
    assert (state / "secret-slack-webhook-url").read_text() == FAKE_WEBHOOK
    for call in first_calls + second_calls:
        assert FAKE_API_KEY not in call and FAKE_WEBHOOK not in call
    for result in (first, second):
        assert FAKE_API_KEY not in result.stdout + result.stderr
        assert FAKE_WEBHOOK not in result.stdout + result.stderr


def test_a_changed_secret_adds_one_version_and_an_absent_one_is_kept(
    small_repo, tmp_path
):
    state = tmp_path / "fake-project"
    state.mkdir()
    real_run(
        small_repo, state, MEETUP_API_KEY=FAKE_API_KEY, SLACK_WEBHOOK_URL=FAKE_WEBHOOK
    )

    _, calls = real_run(small_repo, state, MEETUP_API_KEY="a-rotated-key")

    assert [call for call in calls if "versions add" in call] == [
        "secrets versions add meetup-api-key --data-file=-"
    ]
    assert (state / "secret-meetup-api-key").read_text() == "a-rotated-key"
    assert (state / "secret-slack-webhook-url").read_text() == FAKE_WEBHOOK


def test_a_first_run_without_a_secret_value_stops(small_repo, tmp_path):
    state = tmp_path / "fake-project"
    state.mkdir()
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    shutil.copy2(FAKE_GCLOUD, bin_dir / "gcloud")

    result = run_deploy(
        "--project",
        PROJECT,
        "--region",
        REGION,
        path=Path(f"{bin_dir}{os.pathsep}{os.environ['PATH']}"),
        env={"FAKE_GCLOUD_STATE": str(state), "HOME": str(tmp_path)},
        cwd=small_repo,
    )

    assert result.returncode == 1
    assert "secret meetup-api-key has no version yet" in result.stderr
    calls = (state / "calls.log").read_text()
    assert "functions deploy" not in calls


def test_the_vm_receives_tracked_files_and_the_filled_in_config(small_repo, tmp_path):
    state = tmp_path / "fake-project"
    state.mkdir()

    real_run(
        small_repo, state, MEETUP_API_KEY=FAKE_API_KEY, SLACK_WEBHOOK_URL=FAKE_WEBHOOK
    )

    shipped = state / "scp"
    document = json.loads((shipped / "meetup-collector-config.json").read_text())
    # The trigger's own loader accepts it whole (it stops on any unknown key).
    config = config_from_dict(document)
    assert config.functions == FunctionUrls(
        **{
            name: f"https://{name.replace('_', '-')}-fake.a.run.app"
            for name in HTTP_FUNCTIONS
        }
    )
    assert config.auth.mode == "google_id_token"
    assert config.logging.destination == "cloud"
    assert config.state_dir == "/var/lib/meetup-collector"
    assert config.bucket == DATA_BUCKET
    assert set(config.enabled_streams()) == {
        "rsvps",
        "open_events",
        "event_comments",
        "photos",
        "open_venues",
    }
    with tarfile.open(shipped / "meetup-collector.tar.gz") as bundle:
        names = set(bundle.getnames())
    assert {"trigger_gcf.py", "requirements.txt", "deploy/vm-setup.sh"} <= names
    assert "local-notes.txt" not in names
    assert (shipped / "vm-setup.sh").read_bytes() == VM_SETUP_SCRIPT.read_bytes()


# Bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--project is required"),
        (["--region", REGION], "--project is required"),
        (["--project", PROJECT], "--region is required"),
        (["--project", "Demo_Project", "--region", REGION], "is not a project id"),
        (
            ["--project", PROJECT, "--region", "moon-base"],
            "is not a Google Cloud region",
        ),
        (["--project", PROJECT, "--region", "EUROPE-WEST1"], "is not a Google Cloud"),
        (["--project", PROJECT, "--region", "uscentral1"], "is not a Google Cloud"),
        (
            ["--project", PROJECT, "--region", REGION, "--zone", "us-east1-b"],
            "is not a zone of region europe-west1",
        ),
        (
            [
                "--project",
                PROJECT,
                "--region",
                REGION,
                "--data-bucket=same",
                "--error-bucket=same",
            ],
            "must differ",
        ),
        (["--project", PROJECT, "--region"], "--region needs a value"),
        (["--project", PROJECT, "--region", REGION, "--bogus"], "unknown option"),
    ],
)
def test_bad_input_fails_with_a_clear_message(tmp_path, args, message):
    result = run_deploy("--dry-run", *args, path=empty_bin(tmp_path))

    assert result.returncode == 2
    assert message in result.stderr
    assert "--help" in result.stderr
    assert result.stdout == ""


def script_flags() -> set[str]:
    script = DEPLOY_SCRIPT.read_text()
    parser = script[script.index("parse_args() {") : script.index("# check VALUE")]
    case_patterns = r"^\s+(?:-h \| )?(--[a-z][a-z-]+)(?: \| --[a-z-]+)*\)"
    flags = set(re.findall(case_patterns, parser, flags=re.MULTILINE))
    flags |= set(re.findall(r"--[a-z][a-z-]+", parser.split("value_flags=(")[1][:400]))
    # The refused secret flags are no flags of the script.
    return flags - {"--meetup-api-key", "--slack-webhook", "--slack-webhook-url"}


def test_help_and_readme_list_every_flag(tmp_path):
    result = run_deploy("--help", path=empty_bin(tmp_path))
    readme = (DEPLOY_DIR / "README.md").read_text()

    assert result.returncode == 0
    flags = script_flags()
    assert {"--project", "--region", "--dry-run", "--meetup-api-key-file"} <= flags
    for flag in flags:
        assert flag in result.stdout, flag
        assert f"`{flag}" in readme, flag
    assert readme.startswith("## Deploying to Google Cloud\n")


# The systemd unit and the VM setup


def unit_settings() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in UNIT_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, value = line.split("=", 1)
            current[key] = value
    return sections


def test_the_unit_restarts_keeps_its_state_and_runs_unprivileged():
    service = unit_settings()["Service"]

    assert service["Restart"] == "always"
    assert service["RestartSec"]
    assert service["StateDirectory"] == "meetup-collector"
    assert service["User"] and service["User"] != "root"
    assert "DynamicUser" not in service
    assert service["NoNewPrivileges"] == "yes"
    assert unit_settings()["Install"]["WantedBy"] == "multi-user.target"
    assert unit_settings()["Unit"]["StartLimitIntervalSec"] == "0"


def test_the_unit_runs_the_trigger_as_vm_setup_and_deploy_install_it():
    service = unit_settings()["Service"]
    setup = VM_SETUP_SCRIPT.read_text()
    deploy = DEPLOY_SCRIPT.read_text()

    assert service["ExecStart"].split() == [
        "/opt/meetup-collector/current/venv/bin/python",
        "trigger_gcf.py",
        "--config",
        "/etc/meetup-collector/config.json",
    ]
    assert service["WorkingDirectory"] == "/opt/meetup-collector/current"
    assert f"SERVICE_USER={service['User']}\n" in setup
    assert "INSTALL_DIR=/opt/meetup-collector\n" in setup
    assert "CONFIG_PATH=/etc/meetup-collector/config.json\n" in setup
    assert "VM_CONFIG_PATH=/etc/meetup-collector/config.json\n" in deploy
    assert f"VM_STATE_DIR=/var/lib/{service['StateDirectory']}\n" in deploy


def test_vm_setup_refuses_missing_arguments(tmp_path):
    result = subprocess.run(
        [BASH, str(VM_SETUP_SCRIPT), "--bundle", "x.tar.gz"],
        env={"PATH": str(empty_bin(tmp_path))},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert "--bundle and --config are both required" in result.stderr


# Lint


def shellcheck_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("shellcheck")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("shellcheck")


def test_the_scripts_are_clean_under_shellcheck():
    shellcheck = shellcheck_binary()
    if shellcheck is None:
        pytest.skip("shellcheck is missing: pip install -r requirements.txt")
    scripts = sorted(DEPLOY_DIR.glob("*.sh")) + [FAKE_GCLOUD]
    assert len(scripts) >= 3

    result = subprocess.run(
        [shellcheck, "--severity=style", *map(str, scripts)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
