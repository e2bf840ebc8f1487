"""Offline checks of everything under deploy/ and k8s/ (run by deploy/check, which renders the
manifests and provides the tools). Each check prints what it checked; any failure exits 1 with
the offending file and field named.

  python3 deploy/check_deploy.py RENDERED_DIR

RENDERED_DIR holds base.yaml, dev.yaml and prod.yaml (kustomize output) and nothing else.
"""

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
    print(f"compose.yaml: {len(compose['services'])} services checked")


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
    check_dockerfiles()
    check_promql(promtool)
    if failures:
        print(f"{len(failures)} problem(s)")
        sys.exit(1)
    print("deploy checks passed")


if __name__ == "__main__":
    main()
