"""scripts/test.sh runs the paths it is given (else the suite in tests/), and scripts/env.sh installs with
the constraints file IFR_CONSTRAINTS names, re-installing when that choice changes. Both run here against a
fake environment whose python records its arguments, so nothing is installed and no test runs."""
import os
import shutil
import subprocess

import pytest

from helpers import ROOT

FAKE_PYTHON = '#!/bin/sh\necho "$*" >> "$IFR_FAKE_LOG"\n'


@pytest.fixture
def checkout(tmp_path):
    """A copy of the checkout's scripts and install files, with a fake environment in .venv."""
    root = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "scripts"), root / "scripts")
    for name in ("setup.py", "constraints.txt", "constraints-lower.txt"):
        shutil.copy(os.path.join(ROOT, name), root / name)
    (root / "tests").mkdir()
    (root / "tests" / "test_a.py").write_text("")
    for venv in (".venv", ".venv-lower"):
        (root / venv / "bin").mkdir(parents=True)
        (root / venv / "bin" / "python").write_text(FAKE_PYTHON)
        (root / venv / "bin" / "python").chmod(0o755)
        (root / venv / "bin" / "activate").write_text(f'PATH="{root / venv / "bin"}:$PATH"\n')
    return root


def _run(checkout, *arguments, cwd=None, **env):
    log = checkout / "calls.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["bash", str(checkout / "scripts" / "test.sh"), *arguments], cwd=cwd or checkout,
                          env={"PATH": "/usr/bin:/bin", "IFR_FAKE_LOG": str(log), **env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_test_sh_runs_the_paths_it_names_else_the_whole_suite(checkout):
    a = checkout / "tests" / "test_a.py"
    assert _run(checkout)[-1] == "-m pytest -q tests"
    assert _run(checkout, "tests/test_a.py")[-1] == f"-m pytest -q {a}"
    assert _run(checkout, "tests/test_a.py::test_x", "-x")[-1] == f"-m pytest -q {a}::test_x -x"
    # relative to where it is called from (env.sh runs pytest from the checkout's root)
    assert _run(checkout, "test_a.py", cwd=checkout / "tests")[-1] == f"-m pytest -q {a}"
    # options only, even when an option's value happens to name a file: the whole suite
    assert _run(checkout, "-k", "tests", "-x")[-1] == "-m pytest -q tests -k tests -x"


def test_env_sh_installs_with_the_chosen_constraints_and_reinstalls_when_the_choice_changes(checkout):
    def installs(calls):
        return [c for c in calls if c.startswith("-m pip install -q -c")]

    assert installs(_run(checkout)) == [f"-m pip install -q -c {checkout}/constraints.txt -e {checkout}[test]"]
    assert installs(_run(checkout)) == []  # stamped: nothing to install
    lower = dict(IFR_CONSTRAINTS="constraints-lower.txt", IFR_VENV=str(checkout / ".venv-lower"))
    assert installs(_run(checkout, **lower)) == [
        f"-m pip install -q -c {checkout}/constraints-lower.txt -e {checkout}[test]"]
    assert installs(_run(checkout, **lower)) == []
    # the same environment switched to the other constraints file is re-installed
    assert len(installs(_run(checkout, IFR_CONSTRAINTS="constraints-lower.txt"))) == 1
    done = subprocess.run(["bash", str(checkout / "scripts" / "test.sh")], cwd=checkout, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "IFR_CONSTRAINTS": "constraints-newest.txt"})
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "constraints-newest.txt, which is not a file" in done.stderr


def test_env_sh_tries_a_failed_install_again_and_stamps_only_a_finished_one(checkout):
    # this fake python's "pip install -c" fails as often as IFR_FAKE_FAILURES says, as a broken-off download does
    (checkout / ".venv" / "bin" / "python").write_text(FAKE_PYTHON + (
        'case "$*" in "-m pip install -q -c"*)\n'
        '  if [ "$(grep -c "^-m pip install -q -c" "$IFR_FAKE_LOG")" -le "$IFR_FAKE_FAILURES" ]; then\n'
        '    echo "ERROR: incomplete-download" >&2; exit 1; fi;;\nesac\n'))
    install = f"-m pip install -q -c {checkout}/constraints.txt -e {checkout}[test]"
    calls = _run(checkout, IFR_FAKE_FAILURES="2", IFR_INSTALL_WAIT_S="0")
    assert calls.count(install) == 3 and calls[-1] == "-m pytest -q tests"
    assert (checkout / ".venv" / ".ifr-installed").is_file()

    (checkout / ".venv" / ".ifr-installed").unlink()
    log = checkout / "calls.log"
    log.unlink()
    done = subprocess.run(["bash", str(checkout / "scripts" / "test.sh")], cwd=checkout, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "IFR_FAKE_LOG": str(log),
                                                      "IFR_FAKE_FAILURES": "9", "IFR_INSTALL_ATTEMPTS": "3",
                                                      "IFR_INSTALL_WAIT_S": "0"})
    calls = log.read_text().splitlines()
    assert done.returncode == 1 and calls.count(install) == 3 and "-m pytest -q tests" not in calls
    assert "failed (attempt 2 of 3): trying again in 0 s" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("[env] 'pip install -q -c")
    assert "failed 3 times" in done.stderr.strip().splitlines()[-1]
    assert not (checkout / ".venv" / ".ifr-installed").exists()  # the next run installs again


@pytest.mark.parametrize("setting", [{"IFR_INSTALL_ATTEMPTS": "0"}, {"IFR_INSTALL_ATTEMPTS": "three"},
                                     {"IFR_INSTALL_WAIT_S": "-5"}])
def test_env_sh_refuses_install_settings_that_are_not_counts(checkout, setting):
    done = subprocess.run(["bash", str(checkout / "scripts" / "test.sh")], cwd=checkout, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **setting})
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "IFR_INSTALL_ATTEMPTS must be a whole number >= 1" in done.stderr


# df for .ci/run's disk check: the checkout on one disk, TMPDIR on IFR_FAKE_TMP_DISK, each with the free
# space (in KB) the test gives.
FAKE_DF = '''#!/bin/sh
for place; do :; done
case "$place" in
  "$TMPDIR"*) disk="$IFR_FAKE_TMP_DISK"; free="$IFR_FAKE_TMP_KB";;
  *) disk=checkout-disk; free="$IFR_FAKE_CHECKOUT_KB";;
esac
echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
echo "$disk 999999999 1 $free 1% /$disk"
'''
GB = 1024 * 1024


def _ci(checkout, tmp_path, checkout_gb, tmp_gb, tmp_disk):
    shutil.copytree(os.path.join(ROOT, ".ci"), checkout / ".ci")
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "bin" / "df").write_text(FAKE_DF)
    (tmp_path / "bin" / "df").chmod(0o755)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    log = checkout / "calls.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["bash", str(checkout / ".ci" / "run")], capture_output=True, text=True, timeout=60, env={
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TMPDIR": str(tmp_path / "tmp"), "IFR_FAKE_LOG": str(log),
        "IFR_FAKE_CHECKOUT_KB": str(int(checkout_gb * GB)), "IFR_FAKE_TMP_KB": str(int(tmp_gb * GB)),
        "IFR_FAKE_TMP_DISK": tmp_disk})
    return done, (log.read_text().splitlines() if log.exists() else [])


@pytest.mark.parametrize("checkout_gb, tmp_gb, tmp_disk, refused", [
    (16, 16, "checkout-disk", False), (14, 14, "checkout-disk", True),   # one disk: 15 GB in all
    (14, 3, "tmp-disk", False), (12, 100, "tmp-disk", True), (40, 1, "tmp-disk", True)])
def test_ci_runs_the_suite_on_both_ends_of_the_range_when_the_disk_has_room(checkout, tmp_path, checkout_gb,
                                                                             tmp_gb, tmp_disk, refused):
    done, calls = _ci(checkout, tmp_path, checkout_gb, tmp_gb, tmp_disk)
    assert f"[ci] free disk: {checkout_gb} GB for the checkout, {tmp_gb} GB in {tmp_path / 'tmp'}" in done.stdout
    if refused:
        assert done.returncode == 1 and calls == []  # refused before anything is installed
        assert len(done.stderr.strip().splitlines()) == 1 and "needs about 15 GB of free disk" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert calls.count("-m pytest -q tests") == 2  # the pinned pair, then the lower bound
        assert any(c.endswith("constraints-lower.txt -e " + f"{checkout}[test]") for c in calls)
