"""The deployment files: they parse, agree with each other, and ask for what tcptop needs.

No cluster and no systemd init here: the Kubernetes manifest is checked as data (kubectl
needs an API server even for a client-side dry run), the systemd unit with
`systemd-analyze verify` where it is installed. tests/kernel/test_exporter.py runs tcptop
with exactly the unit's capability set.
"""

import configparser
import os
import shlex
import shutil
import subprocess

import pytest
import yaml

from tcptop import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "deploy", "systemd", "tcptop-exporter.service")
MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "tcptop-exporter.yaml")


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(UNIT)
    return cp


def manifest() -> dict[str, dict]:
    with open(MANIFEST) as f:
        return {d["kind"]: d for d in yaml.safe_load_all(f)}


def unit_capabilities() -> set[str]:
    return {c.removeprefix("CAP_") for c in unit()["Service"]["CapabilityBoundingSet"].split()}


def daemonset_container() -> dict:
    return manifest()["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]


def test_systemd_unit_restarts_on_failure_and_runs_a_valid_command():
    svc = unit()["Service"]
    assert svc["Restart"] == "on-failure"
    argv = shlex.split(svc["ExecStart"])
    assert argv[0].endswith("/.venv/bin/tcptop")
    args = cli.build_parser().parse_args(argv[1:])
    assert args.serve == ("", 9977)
    assert set(svc["AmbientCapabilities"].split()) == set(svc["CapabilityBoundingSet"].split())


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # The unit names /opt/tcptop; verify checks that ExecStart exists, so point it at this checkout.
    text = open(UNIT).read().replace("/opt/tcptop", ROOT)
    path = tmp_path / "tcptop-exporter.service"
    path.write_text(text)
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "tcptop")):
        pytest.skip("no .venv/bin/tcptop in this checkout (run make setup)")
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_daemonset_shares_the_hosts_network_and_processes_and_mounts_what_bpf_needs():
    ds = manifest()["DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    c = daemonset_container()
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {"/sys/fs/cgroup", "/sys/kernel/btf"} <= set(mounts)
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    for m in mounts.values():
        assert m.get("readOnly") is True
        assert volumes[m["name"]] == m["mountPath"]  # the host's own tree at the same place
    assert c["resources"]["limits"]["memory"] and c["resources"]["limits"]["cpu"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_daemonset_has_the_units_capabilities_and_nothing_more():
    sc = daemonset_container()["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == unit_capabilities()
    assert sc["privileged"] is False and sc["runAsUser"] == 0


def test_daemonset_port_args_annotations_and_service_agree():
    c = daemonset_container()
    args = cli.build_parser().parse_args(c["args"])
    port = args.serve[1]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": port}
    annotations = manifest()["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    svc = manifest()["Service"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"].items() <= manifest()["DaemonSet"]["spec"]["template"]["metadata"]["labels"].items()
    assert c["readinessProbe"]["httpGet"]["path"] == "/metrics"
