"""The model contract checked in a fresh interpreter (``python -m models.contract_process``).

The check opens the plain model and extra ONNX Runtime sessions; in a long-lived worker
their freed memory stays in the process heap (about 150 MB for the default model, in every
pool child). Run here, it leaves with the subprocess. A broken contract is raised again in
the caller as the same ``ModelContractError`` with the same message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.contract import check_model_contract
from models.errors import ModelContractError
from models.manifest import ModelManifest

CHECK_TIMEOUT_S = 600.0
_FAILED = 3  # exit status: the contract is broken (the message is on stderr's last line)


def check_in_subprocess(manifest: ModelManifest, model_path: Path, cam_path: Path) -> None:
    """``check_model_contract`` in a child interpreter; raises ModelContractError when it fails."""
    payload = json.dumps({"manifest": manifest.model_dump(mode="json"), "model": str(model_path), "cam": str(cam_path)})
    done = subprocess.run(
        [sys.executable, "-m", "models.contract_process"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    if done.returncode == _FAILED:
        raise ModelContractError(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ModelContractError(f"the model contract check could not run (exit {done.returncode}): {last[0]}")


def _main() -> int:
    request = json.loads(sys.stdin.read())
    manifest = ModelManifest.model_validate(request["manifest"])
    try:
        check_model_contract(manifest, Path(request["model"]), Path(request["cam"]))
    except ModelContractError as exc:
        print(str(exc), file=sys.stderr)
        return _FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
