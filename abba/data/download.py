"""Download every data file the project uses into the layout of `paths.data_dir` (env ABBA_DATA_DIR).

    bash scripts/get_data.sh                                   # the same command in the project's .venv
    python -m abba.data.download                               # everything, into $ABBA_DATA_DIR or ../shared/data
    python -m abba.data.download only=tests                    # the 15 files the test suite reads (~35 MB + MATH.tar)
    python -m abba.data.download data_dir=/data/abba only=arithmetic,gsm8k_train
    python -m abba.data.download source=http://mirror.example/abba-data   # a copy laid out as the data folder

`MANIFEST` below is the one list of files: where each comes from, where it goes, how it is checked (size and
sha256 where the upstream bytes are pinned, else the record count, else nothing). `only=` takes file names and
groups (`GROUPS`): tests, arithmetic, commonsense, training, all (the default).

A run
* skips a file that is already there and passes its checks (one that fails them is downloaded again);
* downloads into `<file>.part` and renames it once it passes; a download that stops keeps its .part, and the
  next run resumes it with an HTTP Range request;
* deletes a downloaded file that fails its checks, and says so;
* prints one line per file, then on stderr one `error: <file>: <why>: <what to do>` line per failure;
  exit 1 when any failed, 2 for a bad command line (abba/cli.py).

This module is the manifest and the command; one file's transfer (resume, HTTP errors) is abba.data.fetch.

Sources: GSM8K from openai/grade-school-math; the eight commonsense test sets, four training splits and
Commonsense170K from the LLM-Adapters repository (raw GitHub files); MetaMathQA from the Hugging Face Hub; MATH
from the original archive of Hendrycks et al. (MATH.tar, as EleutherAI/hendrycks_math's loader fetched it),
converted to one JSONL record per test problem (`math_test_from_archive`): no public JSONL of the 5000-problem test
split in this schema was found. `source=URL` fetches every file from URL/<its path in the data folder> instead
(MATH: URL/MATH.tar), e.g. another machine's data folder served with `python -m http.server`.
"""

from __future__ import annotations

import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..cli import UsageError, did_you_mean, one_line_errors, parse_key_values
from ..layout import REPO_ROOT
from .fetch import FetchError, brief, count_records, fetch, sha256_of
from .math_archive import math_test_from_archive


USAGE = "usage: python -m abba.data.download [data_dir=DIR] [only=NAME,...] [source=URL]"
LLM_ADAPTERS = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main"
GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"
HF_DATASETS = "https://huggingface.co/datasets"
MATH_ARCHIVE = "https://people.eecs.berkeley.edu/~hendrycks/MATH.tar"


@dataclass(frozen=True)
class DataFile:
    name: str                   # what only= calls it
    path: str                   # where it goes under the data folder (eval/benchmarks, configs/data read it there)
    url: str                    # its public home
    size: int | None = None     # bytes, when the upstream file is pinned
    sha256: str | None = None
    records: int | None = None  # JSON list length or JSONL lines
    convert: str | None = None  # "math": `url` is the MATH archive, and `path` is made from its test split

    @property
    def mirror_path(self) -> str:
        """Where a `source=` mirror holds it: its path in the data folder, or the archive's file name."""
        return Path(urlparse(self.url).path).name if self.convert else self.path


def _commonsense(name: str, split: str, records: int, size: int | None = None, sha256: str | None = None) -> DataFile:
    folder = "commonsense" if split == "test" else "commonsense_train"
    return DataFile(name if split == "test" else f"{name}_train", f"{folder}/{name}/{split}.json",
                    f"{LLM_ADAPTERS}/dataset/{name}/{split}.json", size, sha256, records)


# Sizes and digests: the upstream files at the time of writing, byte-identical to ../shared/data (the files the
# tests were written against) except hellaswag, which ../shared/data rebuilt from HellaSwag's validation set.
# MATH's digest is of the converted file. MetaMathQA and Commonsense170K are not pinned (too large to check here).
MANIFEST: tuple[DataFile, ...] = (
    DataFile("gsm8k", "math_eval/gsm8k_test.jsonl", f"{GSM8K}/test.jsonl", 749_738,
             "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 1319),
    DataFile("math", "math_eval/MATH_test.jsonl", MATH_ARCHIVE, 4_298_696,
             "9235b7d073aeaab9143f960cc15b896295598edbecfe615a8e9da92bce713c2c", 5000, convert="math"),
    _commonsense("boolq", "test", 3270, 899_151, "89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9"),
    _commonsense("piqa", "test", 1838, 913_157, "3860d11b9b42e590b6b4bbc1643214d373ed0b0d4ac62fcc7bdceb8e044ad141"),
    _commonsense("social_i_qa", "test", 1954, 843_748,
                 "71543f41127451945379d106ffedaef502f1c8770dff6d2f543aca85e3080b1d"),
    _commonsense("hellaswag", "test", 10042),
    _commonsense("winogrande", "test", 1267, 497_409,
                 "6946f5209e7114c65c6d04f8f644c5a061af20d730b1cfe158fff3dc44076fb9"),
    _commonsense("ARC-Easy", "test", 2376, 1_157_216,
                 "3f32a84716ca6d57d38728bf80cc8117aecd17445c2cf29a68b571b810eb82dc"),
    _commonsense("ARC-Challenge", "test", 1172, 622_510,
                 "4a89ce368ae01a71d268d9851686738b2a0a1d84271116bab49a1dd2b48ecad7"),
    _commonsense("openbookqa", "test", 500, 202_545,
                 "8479930f7b8a26052c78250280b5465a4016ca7fc806af440d0f37e243f3099e"),
    DataFile("gsm8k_train", "math_train/gsm8k_train.jsonl", f"{GSM8K}/train.jsonl", 4_166_206,
             "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 7473),
    _commonsense("ARC-Challenge", "train", 1119, 585_556,
                 "a9debff28aafed86a08211dc3584a3b6cb38edca8c56bb34cd5002ed54aeebfb"),
    _commonsense("ARC-Easy", "train", 2251, 1_092_324,
                 "6a06cece3dec32f4fb1c1b0fc29dab14be7cf3053b417290dbc6cd845359f5ff"),
    _commonsense("boolq", "train", 9427, 2_599_507,
                 "5ccbaceebaddc69765e1c4a363632196b81851d303696672165ab59ec4e48c83"),
    _commonsense("openbookqa", "train", 4957, 1_987_446,
                 "a1e094eeea01f70c0baa880f37497b26700ae99b243927b9c529984de9b1fe90"),
    DataFile("metamathqa", "math_train/MetaMathQA-395K.json",
             f"{HF_DATASETS}/meta-math/MetaMathQA/resolve/main/MetaMathQA-395K.json"),
    DataFile("commonsense170k", "commonsense_170k.json", f"{LLM_ADAPTERS}/ft-training_set/commonsense_170k.json"),
)
_TESTS = ("gsm8k", "math", "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge",
          "openbookqa", "gsm8k_train", "ARC-Challenge_train", "ARC-Easy_train", "boolq_train", "openbookqa_train")
GROUPS: dict[str, tuple[str, ...]] = {
    "tests": _TESTS,  # what the test suite reads (tests/conftest.py: the `shared_data` fixture)
    "arithmetic": ("gsm8k", "math"),
    "commonsense": _TESTS[2:10],
    "training": ("gsm8k_train", "ARC-Challenge_train", "ARC-Easy_train", "boolq_train", "openbookqa_train",
                 "metamathqa", "commonsense170k"),
    "all": tuple(f.name for f in MANIFEST),
}


def default_data_dir() -> Path:
    """$ABBA_DATA_DIR, else ../shared/data beside the repository (configs/paths/default.yaml)."""
    return Path(os.environ.get("ABBA_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def select(only: str, manifest: tuple[DataFile, ...] | None = None) -> list[DataFile]:
    """The manifest entries `only` names (comma-separated files and groups), in manifest order."""
    manifest = MANIFEST if manifest is None else manifest
    by_name = {f.name: f for f in manifest}
    wanted: set[str] = set()
    for word in filter(None, (w.strip() for w in str(only).split(","))):
        if word in GROUPS:
            wanted |= set(GROUPS[word]) & set(by_name) if word != "all" else set(by_name)
        elif word in by_name:
            wanted.add(word)
        else:
            raise UsageError(f"only={word}: no such file or group{did_you_mean(word, [*GROUPS, *by_name])}; "
                             f"groups: {', '.join(GROUPS)}; files: {', '.join(by_name)}")
    if not wanted:
        raise UsageError(f"only= names nothing; {USAGE}")
    return [f for f in manifest if f.name in wanted]


def check(entry: DataFile, path: Path) -> str | None:
    """None when `path` passes the entry's checks, else what is wrong (a phrase)."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"{size:,} bytes, expected {entry.size:,}"
    if entry.sha256 is not None:
        digest = sha256_of(path)
        if digest != entry.sha256:
            return f"sha256 {digest[:16]}… is not the expected {entry.sha256[:16]}…"
    if entry.records is not None:
        try:
            n = count_records(path, entry.path.endswith(".jsonl"))
        except (ValueError, UnicodeDecodeError) as error:
            return f"no valid JSON records ({str(error).splitlines()[0][:80]})"
        if n != entry.records:
            return f"{n:,} records, expected {entry.records:,}"
    return None


def _made_from_archive(entry: DataFile, url: str, target: Path) -> Path:
    """The archive fetched (resumable, kept until converted) and converted into `<target>.part`."""
    archive = target.parent / entry.mirror_path
    if not archive.is_file():
        part = archive.with_name(archive.name + ".part")
        fetch(url, part, archive.name)
        part.replace(archive)
    out = target.with_name(target.name + ".part")
    try:
        math_test_from_archive(archive, out)
    except (tarfile.TarError, ValueError, KeyError, OSError) as error:
        archive.unlink()  # (math_test_from_archive writes `out` whole or not at all)
        raise FetchError(f"{archive.name} from {url} is not the MATH archive ({brief(error)}): deleted; run the "
                         "same command again") from None
    archive.unlink()  # only the converted file is kept
    return out


def get(entry: DataFile, data_dir: Path, source: str | None) -> str:
    """Make sure `data_dir/entry.path` is there and passes its checks; returns what was done."""
    target = data_dir / entry.path
    if target.is_file():
        why = check(entry, target)
        if why is None:
            return "present"
        print(f"  {entry.path}: present but {why}: downloading it again", flush=True)
        target.unlink()
    url = f"{source.rstrip('/')}/{entry.mirror_path}" if source else entry.url
    if entry.convert and source:
        # A mirror that is another machine's data folder holds the converted file, one laid out for downloads
        # the archive: the converted file first.
        try:
            url = f"{source.rstrip('/')}/{entry.path}"
            part = target.with_name(target.name + ".part")
            fetch(url, part, entry.path)
        except FetchError:
            url = f"{source.rstrip('/')}/{entry.mirror_path}"
            part = _made_from_archive(entry, url, target)
    elif entry.convert:
        part = _made_from_archive(entry, url, target)
    else:
        part = target.with_name(target.name + ".part")
        fetch(url, part, entry.path)
    why = check(entry, part)
    if why is not None:
        part.unlink()
        raise FetchError(f"the downloaded file has {why}: deleted; run the same command again (if it fails the same "
                         f"way, {url} has changed)")
    part.replace(target)
    return "downloaded"


def describe(entry: DataFile, path: Path) -> str:
    pinned = "sha256 checked" if entry.sha256 else f"{entry.records:,} records checked" if entry.records else \
        "not pinned"
    return f"{path.stat().st_size:>12,} bytes  {pinned}"


def download(entries: list[DataFile], data_dir: Path, source: str | None = None) -> list[str]:
    """Fetch `entries` into `data_dir`, one line each on stdout; returns one '<file>: <why>: <what to do>' per
    failure (every file is tried, whatever failed before it)."""
    print(f"{len(entries)} file{'s' * (len(entries) != 1)} -> {data_dir}" + (f" (source={source})" if source else ""),
          flush=True)
    failures, done = [], {"present": 0, "downloaded": 0}
    for entry in entries:
        try:
            status = get(entry, data_dir, source)
        except FetchError as error:
            failures.append(f"{entry.path}: {error}")
            print(f"  {'FAILED':<10} {entry.path}", flush=True)
            continue
        except OSError as error:  # data_dir is a file, not writable, full
            failures.append(f"{entry.path}: cannot write under {data_dir} ({brief(error)}): pass a writable "
                            "data_dir=")
            print(f"  {'FAILED':<10} {entry.path}", flush=True)
            continue
        done[status] += 1
        print(f"  {status:<10} {entry.path}  {describe(entry, data_dir / entry.path)}", flush=True)
    print(f"{done['downloaded']} downloaded, {done['present']} already there, {len(failures)} failed", flush=True)
    return failures


def parse(argv: list[str]) -> dict[str, str]:
    """{data_dir, only, source} from `key=value` arguments ("" for one not given); `-h`/`--help` prints the
    docstring and exits 0. Raises UsageError for an argument without '=', an unknown key, an empty value or a
    source that is not an http(s):// or file:// address."""
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        if "=" not in arg:  # before parse_key_values: the message names the argument first
            raise UsageError(f"{arg}: expected key=value; {USAGE}")
    args = parse_key_values(argv, {"data_dir": None, "only": None, "source": None}, USAGE)
    for arg in argv:  # an empty value is a mistake, not "everything"
        key, _, value = arg.partition("=")
        if not value:
            raise UsageError(f"{key}= is empty: give a value or leave the option out; {USAGE}")
    source = args["source"]
    if source is not None and urlparse(source).scheme not in ("http", "https", "file"):
        raise UsageError(f"source={source}: expected an http://, https:// or file:// address; {USAGE}")
    return {key: value or "" for key, value in args.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with one_line_errors(on_interrupt="interrupted: run the same command again to resume (a partial download is "
                                      "kept as <file>.part)"):
        args = parse(argv)
        entries = select(args.get("only") or "all")
        data_dir = Path(args["data_dir"]) if args.get("data_dir") else default_data_dir()
        if data_dir.exists() and not data_dir.is_dir():
            raise UsageError(f"data_dir={data_dir} is a file: pass a folder (it is created when missing)")
        failures = download(entries, data_dir, args.get("source") or None)
    for failure in failures:
        print("error: " + " ".join(failure.split("\n")), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
