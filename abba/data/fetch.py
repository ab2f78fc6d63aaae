"""One file over HTTP(S) or file://, resumable, and the two measures abba.data.download checks a file by
(sha256_of, count_records).

`fetch` downloads into a `.part` file, resuming with an HTTP Range request from the bytes already there, and
raises FetchError with one line '<why>: <what to do>' when the transfer fails or stops short.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 60
CHUNK = 1 << 20


class FetchError(Exception):
    """A file that could not be fetched or failed its checks; the message is '<why>: <what to do>'."""


def brief(error: BaseException) -> str:
    """'<type>: <first line>' of an exception, for a one-line message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:120]}" if lines else type(error).__name__


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def count_records(path: Path, jsonl: bool) -> int:
    """Records in a JSONL file (non-empty lines, each parsed) or a JSON list; ValueError when it is not one."""
    with path.open(encoding="utf-8") as f:
        if jsonl:
            return sum(1 for line in f if line.strip() and json.loads(line) is not None)
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"a JSON {type(data).__name__}, not a list of records")
    return len(data)


def fetch(url: str, part: Path, label: str) -> None:
    """Download `url` into `part`, resuming from the bytes already there with an HTTP Range request."""
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "abba-get-data/1"} | ({"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # nothing after what the .part holds: let the checks decide
            return
        raise FetchError(f"HTTP {error.code} {error.reason} from {url}: check the address, or pass source=MIRROR") \
            from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise FetchError(f"cannot reach {url} ({str(reason).splitlines()[0] if str(reason) else type(reason)}): "
                         "check the network, or pass source=MIRROR") from None
    with response:
        if start and (getattr(response, "status", None) or 200) != 206:
            start = 0  # the server ignored the Range header and sends the whole file: start the .part again
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        done = start
        part.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty folders
        try:
            with part.open("ab" if start else "wb") as out, \
                    tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=label, leave=False,
                         disable=None) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:  # a reset connection, a timeout
            raise FetchError(f"the download stopped after {done:,} bytes ({brief(error)}): run the same command "
                             f"again to resume from {part.name}") from None
    # urllib returns a short body without an error when the server closes the connection early.
    if total is not None and done < total:
        raise FetchError(f"the download stopped after {done:,} of {total:,} bytes: run the same command again to "
                         f"resume from {part.name}")
