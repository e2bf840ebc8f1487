"""Offline checks of everything under deploy/ and k8s/ (run by deploy/check, which renders the
manifests and provides the tools). Each check prints what it checked; any failure exits 1 with
the offending file and field named.

  python3 deploy/check_deploy.py RENDERED_DIR PROMTOOL

RENDERED_DIR holds base.yaml, dev.yaml and prod.yaml (kustomize output) and nothing else.

The security checks (service accounts, tokens, per-pod secrets, NetworkPolicies, storage limits,
what the Ingress publishes, digests in prod) are then run against mutated copies of the rendered
manifests: each mutation must be caught, so that a check that silently stopped working fails.
"""

import copy
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "k8s" / "schemas"
# Kinds the Kubernetes schemas do not know: validated against k8s/schemas/ instead.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE", re.I)
failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def workspace_binaries():
    names = set()
    for cargo in ROOT.glob("services/*/Cargo.toml"):
        text = cargo.read_text()
        for block in text.split("[[bin]]")[1:]:
            match = re.search(r'name\s*=\s*"([^"]+)"', block)
            if match:
                names.add(match.group(1))
    return names


def dockerfile_bins(dockerfile):
    """The binaries a Dockerfile builds: BIN build args (worker) or the BINS default (torch)."""
    text = dockerfile.read_text()
    match = re.search(r'ARG BINS="([^"]+)"', text)
    return set(match.group(1).split()) if match else set()


def containers(doc):
    spec = doc.get("spec", {})
    template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
    if not template:
        return []
    pod = template.get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def check_rendered(rendered):
    binaries = workspace_binaries()
    torch_bins = dockerfile_bins(ROOT / "deploy/docker/Dockerfile.torch")
    worker_images = {f"medembed-{n}" for n in ("fetcher", "cleaner", "pair-builder")}
    schemas = {
        (api, kind): json.loads((SCHEMAS / f"{api.replace('/', '-')}-{kind}.json").read_text())
        for api, kind in CRD_KINDS
    }
    for path in sorted(rendered.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        print(f"{path.name}: {len(docs)} objects")
        for doc in docs:
            kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
            where = f"{path.name} {kind}/{name}"
            if (doc.get("apiVersion"), kind) in CRD_KINDS:
                try:
                    jsonschema.validate(doc, schemas[(doc["apiVersion"], kind)])
                except jsonschema.ValidationError as e:
                    fail(f"{where}: {e.message} at {list(e.absolute_path)}")
            if kind == "Secret":
                fail(f"{where}: rendered manifests must not contain Secrets (k8s/secrets/ holds templates)")
            if kind == "ConfigMap":
                for key, value in (doc.get("data") or {}).items():
                    if SECRET_NAME.search(key) and value.strip():
                        fail(f"{where}: data key {key} looks like a secret with a value")
                    for line in value.splitlines() if isinstance(value, str) else []:
                        m = re.match(r"\s*([a-z_]+)\s*=\s*\"(.+)\"", line)
                        if m and SECRET_NAME.search(m.group(1)) and not m.group(1).endswith("_file"):
                            fail(f"{where}: {key} sets {m.group(1)} to a value")
            for c in containers(doc):
                image = c.get("image", "")
                short = image.split("/")[-1].split(":")[0]
                if short in worker_images:
                    if short not in binaries:
                        fail(f"{where}: image {image}: no workspace binary {short}")
                elif short == "medembed-torch":
                    program = (c.get("command") or ["medembed-api"])[0]
                    if program not in binaries or program not in torch_bins:
                        fail(f"{where}: command {program} is not a binary of the torch image ({sorted(torch_bins)})")
                for env in c.get("env", []):
                    if SECRET_NAME.search(env["name"]) and not env["name"].endswith("_FILE"):
                        if env.get("value"):
                            fail(f"{where}: env {env['name']} has a literal value; use valueFrom or a _FILE")
                if kind in ("Deployment", "StatefulSet", "Job") and name.startswith("medembed"):
                    sc = c.get("securityContext", {})
                    if sc.get("allowPrivilegeEscalation") is not False:
                        fail(f"{where}: container {c['name']}: allowPrivilegeEscalation must be false")
                    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                        fail(f"{where}: container {c['name']}: capabilities must drop ALL")
                    if not c.get("resources", {}).get("limits"):
                        fail(f"{where}: container {c['name']}: no resource limits")
            if kind == "Deployment" and name.startswith("medembed"):
                pod = doc["spec"]["template"]["spec"]
                psc = pod.get("securityContext", {})
                if psc.get("runAsNonRoot") is not True:
                    fail(f"{where}: runAsNonRoot")
                if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    fail(f"{where}: seccompProfile RuntimeDefault")
                if pod.get("terminationGracePeriodSeconds", 30) <= 30:
                    fail(f"{where}: terminationGracePeriodSeconds must exceed the 30 s drain timeout")
                probes = [c.get("livenessProbe", {}).get("httpGet", {}).get("path") for c in pod["containers"]]
                if "/healthz" not in probes:
                    fail(f"{where}: no /healthz liveness probe")


SECRETS_DIR = "/var/run/secrets/medembed/"
WORKER_SECRET = "medembed-secrets"
API_SECRET = "medembed-api-secrets"
METRICS_PORT = 9464


def pod_spec(doc):
    spec = doc.get("spec", {})
    template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
    return (template or {}).get("spec"), (template or {}).get("metadata", {}).get("labels", {})


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions with In) selects `labels`."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def policy_ports(rules):
    return {p.get("port") for rule in rules or [] for p in rule.get("ports", [])}


def security_failures(name, docs):
    """What is wrong with the security of one rendered file (`name`: base, dev or prod)."""
    out = []
    accounts = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ServiceAccount"}
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
    if not any(
        p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        out.append(f"{name}: no default-deny NetworkPolicy (podSelector {{}}, Ingress and Egress, no rules)")
    for doc in docs:
        kind, dname = doc.get("kind"), doc.get("metadata", {}).get("name", "")
        where = f"{name} {kind}/{dname}"
        if kind not in ("Deployment", "StatefulSet", "Job") or not dname.startswith("medembed"):
            continue
        pod, labels = pod_spec(doc)
        if pod.get("automountServiceAccountToken") is not False:
            out.append(f"{where}: automountServiceAccountToken must be false")
        account = pod.get("serviceAccountName")
        if account != dname:
            out.append(f"{where}: serviceAccountName must be its own ({dname}), not {account}")
        elif account not in accounts:
            out.append(f"{where}: no ServiceAccount {account}")
        elif accounts[account].get("automountServiceAccountToken") is not False:
            out.append(f"{where}: ServiceAccount {account} must set automountServiceAccountToken: false")
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume and not (volume["emptyDir"] or {}).get("sizeLimit"):
                out.append(f"{where}: emptyDir {volume['name']} has no sizeLimit")
        used = set()
        for c in pod.get("containers", []):
            if not c.get("resources", {}).get("limits", {}).get("ephemeral-storage"):
                out.append(f"{where}: container {c['name']}: no ephemeral-storage limit")
            for env in c.get("env", []):
                if str(env.get("value", "")).startswith(SECRETS_DIR):
                    used.add(env["value"][len(SECRETS_DIR):])
        is_api = dname == "medembed-api"
        for volume in pod.get("volumes", []):
            secret = volume.get("secret")
            if not secret:
                continue
            wanted = API_SECRET if is_api else WORKER_SECRET
            if secret.get("secretName") != wanted:
                out.append(
                    f"{where}: mounts Secret {secret.get('secretName')}; it may mount only {wanted} "
                    "(the api never holds the workers' credentials, nor workers the api's)"
                )
            items = {i["key"] for i in secret.get("items") or []}
            if not secret.get("items"):
                out.append(f"{where}: Secret volume {volume['name']} mounts every key; list its items")
            elif items != used:
                out.append(
                    f"{where}: Secret items {sorted(items)} differ from the keys it uses {sorted(used)} "
                    "(each pod mounts only the secret keys it uses; a key not used must not be mounted)"
                )
        if kind == "Deployment":
            selecting = [p for p in policies if selects(p["spec"].get("podSelector", {}), labels)]
            if not any(5672 in policy_ports(p["spec"].get("egress")) for p in selecting):
                out.append(f"{where}: no NetworkPolicy allows its egress to the broker (5672)")
            if not any(METRICS_PORT in policy_ports(p["spec"].get("ingress")) for p in selecting):
                out.append(f"{where}: no NetworkPolicy allows scraping its metrics port ({METRICS_PORT})")
            if is_api and not any(8080 in policy_ports(p["spec"].get("ingress")) for p in selecting):
                out.append(f"{where}: no NetworkPolicy lets the ingress controller reach the api (8080)")
            annotations = doc["spec"]["template"].get("metadata", {}).get("annotations", {})
            if is_api and annotations.get("prometheus.io/port") != str(METRICS_PORT):
                out.append(f"{where}: the api's metrics must be scraped on {METRICS_PORT}, not its API port")
    # What the Ingress publishes: never a metrics port.
    for doc in docs:
        if doc.get("kind") != "Ingress":
            continue
        for rule in doc["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                service = services.get(backend["name"])
                if not service:
                    out.append(f"{name} Ingress/{doc['metadata']['name']}: no Service {backend['name']}")
                    continue
                for port in service["spec"]["ports"]:
                    routed = backend["port"].get("name") == port.get("name") or backend["port"].get("number") == port["port"]
                    if routed and (port.get("targetPort") == "metrics" or METRICS_PORT in (port["port"], port.get("targetPort"))):
                        out.append(f"{name} Ingress/{doc['metadata']['name']}: routes the metrics port of Service {backend['name']}")
    if name == "prod":
        for doc in docs:
            for c in containers(doc):
                if not re.search(r"@sha256:[0-9a-f]{64}$", c.get("image", "")):
                    out.append(f"prod {doc['kind']}/{doc['metadata']['name']}: image {c.get('image')} is not pinned by digest")
    return out


def find(docs, kind, name):
    return next(d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name)


def env_of(doc, env_name):
    return next(e for e in doc["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == env_name)


# Each mutation breaks one rule in a copy of a rendered file; the checks must catch it.
MUTATIONS = [
    ("a pod automounts its token", "base",
     lambda d: find(d, "Deployment", "medembed-fetcher")["spec"]["template"]["spec"].pop("automountServiceAccountToken"),
     "automountServiceAccountToken"),
    ("a component shares the default ServiceAccount", "base",
     lambda d: find(d, "Deployment", "medembed-cleaner")["spec"]["template"]["spec"].update(serviceAccountName="default"),
     "serviceAccountName"),
    ("a ServiceAccount mounts tokens", "base",
     lambda d: find(d, "ServiceAccount", "medembed-trainer").pop("automountServiceAccountToken"),
     "ServiceAccount medembed-trainer"),
    ("no default deny", "base",
     lambda d: d.remove(find(d, "NetworkPolicy", "medembed-default-deny")),
     "default-deny"),
    ("no egress to the broker", "base",
     lambda d: d.remove(find(d, "NetworkPolicy", "medembed-broker-and-store")),
     "egress to the broker"),
    ("no scrape ingress", "base",
     lambda d: d.remove(find(d, "NetworkPolicy", "medembed-metrics-scrape")),
     "scraping its metrics port"),
    ("the api holds the workers' secret", "base",
     lambda d: next(v for v in find(d, "Deployment", "medembed-api")["spec"]["template"]["spec"]["volumes"] if "secret" in v)["secret"].update(secretName=WORKER_SECRET),
     "may mount only medembed-api-secrets"),
    ("a worker mounts every secret key", "base",
     lambda d: next(v for v in find(d, "Deployment", "medembed-indexer")["spec"]["template"]["spec"]["volumes"] if "secret" in v)["secret"].pop("items"),
     "mounts every key"),
    ("a worker mounts a key it does not use", "base",
     lambda d: next(v for v in find(d, "Deployment", "medembed-cleaner")["spec"]["template"]["spec"]["volumes"] if "secret" in v)["secret"]["items"].append({"key": "ncbi-api-key", "path": "ncbi-api-key"}),
     "differ from the keys it uses"),
    ("an emptyDir without sizeLimit", "base",
     lambda d: next(v for v in find(d, "Deployment", "medembed-pair-builder")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp").update(emptyDir={}),
     "has no sizeLimit"),
    ("no ephemeral-storage limit", "base",
     lambda d: find(d, "Deployment", "medembed-trainer")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("ephemeral-storage"),
     "ephemeral-storage"),
    ("the Ingress routes /metrics", "base",
     lambda d: find(d, "Ingress", "medembed-api")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(name="medembed-api-metrics", port={"name": "metrics"}),
     "routes the metrics port"),
    ("the api scraped on its API port", "base",
     lambda d: find(d, "Deployment", "medembed-api")["spec"]["template"]["metadata"]["annotations"].update({"prometheus.io/port": "8080"}),
     "scraped on 9464"),
    ("a prod image by tag", "prod",
     lambda d: find(d, "Deployment", "medembed-api")["spec"]["template"]["spec"]["containers"][0].update(image="ghcr.io/medembed/medembed-torch:0.1.0-cuda"),
     "not pinned by digest"),
]


def check_security(rendered):
    docs = {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(rendered.glob("*.yaml"))}
    for name, file_docs in docs.items():
        problems = security_failures(name, file_docs)
        for problem in problems:
            fail(problem)
        if not problems:
            print(f"{name}.yaml: service accounts, tokens, per-pod secrets, NetworkPolicies, storage limits, Ingress ports{', digests' if name == 'prod' else ''} pass")
    for description, target, mutate, expected in MUTATIONS:
        mutated = copy.deepcopy(docs[target])
        mutate(mutated)
        caught = [p for p in security_failures(target, mutated) if expected in p]
        if caught:
            print(f"mutation caught: {description}: {caught[0]}")
        else:
            fail(f"mutation not caught: {description} (expected a failure mentioning {expected!r})")


def check_dockerfiles():
    for dockerfile in sorted((ROOT / "deploy/docker").glob("Dockerfile.*")):
        text = dockerfile.read_text()
        for line in text.splitlines():
            m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
            if not m:
                continue
            parts = [p for p in m.group(1).split() if not p.startswith("--")]
            for src in parts[:-1]:
                if src != "." and not (ROOT / src).exists():
                    fail(f"{dockerfile.name}: COPY {src}: no such path in the repository")
        for arg_bins in dockerfile_bins(dockerfile):
            if arg_bins not in workspace_binaries():
                fail(f"{dockerfile.name}: builds {arg_bins}, which is not a workspace binary")
        print(f"{dockerfile.name}: COPY sources and binaries exist")
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    for name, service in compose["services"].items():
        build = service.get("build")
        if isinstance(build, dict):
            if not (ROOT / build["dockerfile"]).exists():
                fail(f"compose service {name}: no {build['dockerfile']}")
            binary = build.get("args", {}).get("BIN")
            if binary and binary not in workspace_binaries():
                fail(f"compose service {name}: BIN {binary} is not a workspace binary")
        command = service.get("command")
        if build and command and command[0] not in workspace_binaries():
            fail(f"compose service {name}: command {command[0]} is not a workspace binary")
        for volume in service.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./") and not (ROOT / "deploy" / src).exists():
                fail(f"compose service {name}: volume source {src} does not exist")
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and value and not str(value).startswith("${"):
                fail(f"compose service {name}: {key} has a literal value")
    problems = compose_identity_failures(compose)
    for problem in problems:
        fail(problem)
    mutated = copy.deepcopy(compose)
    mutated["services"]["cleaner"]["environment"] = {
        **mutated["services"]["cleaner"]["environment"],
        "MEDEMBED__STORE__ACCESS_KEY_ID": mutated["services"]["minio"]["environment"]["MINIO_ROOT_USER"],
    }
    if not any("MinIO's root" in p for p in compose_identity_failures(mutated)):
        fail("mutation not caught: a compose worker as MinIO's root")
    else:
        print("mutation caught: a compose worker as MinIO's root")
    print(f"compose.yaml: {len(compose['services'])} services checked")


def compose_identity_failures(compose):
    """medembed's services must not log in as MinIO's root or RabbitMQ's default (admin) user."""
    out = []
    services = compose["services"]
    root = services["minio"]["environment"]["MINIO_ROOT_USER"]
    admin = services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"]
    for name, service in services.items():
        if not service.get("build"):
            continue
        env = service.get("environment") or {}
        url = env.get("MEDEMBED__QUEUE__AMQP_URL", "")
        amqp_user = env.get("MEDEMBED__QUEUE__AMQP_USERNAME") or url.split("://")[-1].split("@")[0].split(":")[0]
        if env.get("MEDEMBED__STORE__ACCESS_KEY_ID") == root:
            out.append(f"compose service {name}: uses MinIO's root user {root}")
        if amqp_user == admin:
            out.append(f"compose service {name}: uses RabbitMQ's default admin user {admin}")
    return out


def dashboard_expressions():
    for dashboard in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
        for panel in json.loads(dashboard.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield dashboard.name, panel["title"], target["expr"]


def check_promql(promtool):
    """Every dashboard expression parses: promtool checks them as recording rules."""
    rules = [
        {"record": f"medembed_dashboard:expr_{i}", "expr": expr}
        for i, (_, _, expr) in enumerate(dashboard_expressions())
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
    out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"dashboard PromQL does not parse:\n{out.stdout}{out.stderr}")
    else:
        print(f"dashboards: {len(rules)} PromQL expressions parse")


def main():
    rendered = pathlib.Path(sys.argv[1])
    promtool = sys.argv[2]
    check_rendered(rendered)
    check_security(rendered)
    check_dockerfiles()
    check_promql(promtool)
    if failures:
        print(f"{len(failures)} problem(s)")
        sys.exit(1)
    print("deploy checks passed")


if __name__ == "__main__":
    main()
