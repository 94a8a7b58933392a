"""Cached experiment cells and the runner that computes them (the machinery of ``kadam reproduce``).

A **cell** is one call ``function(**kwargs)`` of a module-level experiment function (a protocol's) whose
result is a JSON-serialisable dict. Its cache key is the SHA-256 of the canonical JSON of (the function's
qualified name, kwargs, library version, :func:`code_fingerprint` of the function's module, cache format):
changing a setting recomputes exactly the cells whose kwargs it changes, and changing code that computes a
cell recomputes the cells it can affect, nothing else (a stale number is worse than a slow rerun).

**What the key covers** (:func:`computing_sources`): the cell's protocol module and every
``kadam.experiments`` module it imports (transitively), the workloads package, and the library (``kadam``
outside ``experiments/`` and ``cli/``, its native ``.cpp`` kernels included). Not section prose, plots, the
report writer, the registry or the profiles. Each module is hashed as ``ast.dump`` of its syntax tree with
every docstring and string statement removed, so editing a comment or a docstring changes no key; a native
source is hashed as its bytes.

**Cache** (``OUT/cache/<key>.json``): each file holds the key, the call, the wall time, the result and a
SHA-256 digest of the result's canonical JSON. Files are written to a temporary name in the same folder,
flushed, fsynced and renamed (``os.replace``, atomic on POSIX and Windows), so an interrupted run leaves
either the old state or the new one; resuming loses at most the cells in flight (one per worker). A file
that does not parse, names another key or fails its digest is reported and recomputed.

**Runner**: ``jobs = N > 1`` runs cells in N spawned processes (functions are pickled by reference),
``jobs = 1`` in this process; every cell runs with one torch thread either way (so its numbers do not depend
on ``jobs``; this process's thread count is restored after the session). ``executor="dask"`` runs them on a
Dask ``distributed.LocalCluster`` of ``jobs`` single-threaded worker processes instead, and an executor that
is a scheduler address (``tcp://host:8786``) on that cluster's workers; each cell still sets one torch thread,
and the results come back to this process, which alone reads and writes the cache (same keys, same files). A rich progress bar covers the
whole run (its total is the estimated seconds of the cells still to compute, so the ETA is in real time from
the start) and, for long cells whose function accepts ``progress(done, total)`` and whose kwargs do not set
``progress`` themselves, a bar within the cell.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import functools
import hashlib
import inspect
import json
import multiprocessing
import os
import queue
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import kadam
from kadam.experiments.report import atomic_write

__all__ = [
    "EXECUTORS",
    "Cell",
    "CellCache",
    "CellRunner",
    "canonical_json",
    "code_fingerprint",
    "computing_sources",
    "function_name",
    "parse_executor",
    "source_digest",
]

CACHE_FORMAT = 2
_CELL_BAR_MIN_COST = 3.0  # cells estimated to take at least this many seconds get a bar of their own


EXECUTORS = ("process", "dask")
"""Executors of the runner: the process pool (default) and a Dask local cluster; a Dask scheduler address
(``tcp://host:port``, any ``scheme://`` address) selects a running cluster."""


def parse_executor(value: str) -> str:
    """``value`` if it is one of :data:`EXECUTORS` or a scheduler address ``scheme://host:port``; else
    ``ValueError`` naming the accepted values."""
    if value in EXECUTORS:
        return value
    scheme, separator, rest = value.partition("://")
    if separator and scheme and rest:
        return value
    raise ValueError(
        f"executor must be one of {', '.join(EXECUTORS)} or a Dask scheduler address like tcp://host:8786, got {value!r}"
    )


_LIBRARY_EXCLUDED = ("experiments/", "cli/")
_ALWAYS_COVERED = ("experiments/workloads/",)


def _package_root() -> Path:
    return Path(kadam.__file__).parent


def _module_path(module: str, root: Path) -> Path | None:
    """The source file of ``kadam.<...>`` module ``module`` under ``root`` (the ``kadam`` folder), if any."""
    parts = module.split(".")[1:]
    candidate = root.joinpath(*parts)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path) -> set[str]:
    """``kadam`` modules that ``path`` imports (``from kadam.a import b`` yields ``kadam.a`` and ``kadam.a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "kadam" or name.startswith("kadam.")}


def computing_sources(module: str, root: Path | None = None) -> list[Path]:
    """The source files whose code can change the result of a cell defined in ``module``.

    The library (every file of ``root`` outside ``experiments/`` and ``cli/``), the workloads package, and
    ``module`` with every ``kadam.experiments`` module it imports, transitively. ``root`` is the ``kadam``
    package folder (default: the imported package's).
    """
    root = root or _package_root()
    chosen: set[Path] = set()
    for path in (*root.rglob("*.py"), *root.rglob("*.cpp")):
        relative = path.relative_to(root).as_posix()
        if not relative.startswith(_LIBRARY_EXCLUDED) or relative.startswith(_ALWAYS_COVERED):
            chosen.add(path)
    pending = [module]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_path(name, root)
        if path is None:
            continue
        if name.startswith("kadam.experiments"):
            chosen.add(path)
            pending.extend(_imported_modules(path))
    return sorted(chosen)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` with every string-constant expression statement (docstrings, attribute docstrings) removed."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [
                statement
                for statement in body
                if not (
                    isinstance(statement, ast.Expr)
                    and isinstance(statement.value, ast.Constant)
                    and isinstance(statement.value.value, str)
                )
            ]
            node.body = kept or [ast.Pass()]
    return tree


def source_digest(path: Path) -> str:
    """SHA-256 of ``ast.dump`` of the file's syntax tree without docstrings (comments and layout never count);
    for a file that is not Python (a native kernel), SHA-256 of its bytes."""
    if path.suffix != ".py":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    tree = _without_docstrings(ast.parse(path.read_text(encoding="utf-8")))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def code_fingerprint(module: str, root: Path | None = None) -> str:
    """SHA-256 over :func:`source_digest` of the :func:`computing_sources` of a cell defined in ``module``."""
    root = root or _package_root()
    if root == _package_root():
        return _cached_fingerprint(module)
    return _fingerprint(module, root)


def _fingerprint(module: str, root: Path) -> str:
    digest = hashlib.sha256()
    for path in computing_sources(module, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + source_digest(path).encode() + b"\0")
    return digest.hexdigest()


@functools.cache
def _cached_fingerprint(module: str) -> str:
    return _fingerprint(module, _package_root())


def function_name(function: Callable[..., Any]) -> str:
    """``"package.module:qualified_name"`` of a module-level function (what a cell's key and cache file record)."""
    return f"{function.__module__}:{function.__qualname__}"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the text that cache keys and digests hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Cell:
    """One experiment call: ``function`` (a module-level function, so worker processes can import it) applied
    to ``kwargs``.

    ``section`` and ``label`` name it in the progress display; ``cost`` is its estimated wall time in
    seconds on one CPU core (used for the ETA only, never for the key).
    """

    section: str
    label: str
    function: Callable[..., Any]
    kwargs: Mapping[str, Any]
    cost: float = 1.0

    @property
    def name(self) -> str:
        return function_name(self.function)

    @property
    def key(self) -> str:
        identity = {
            "function": self.name,
            "kwargs": self.kwargs,
            "version": kadam.__version__,
            "code": code_fingerprint(self.function.__module__),
            "format": CACHE_FORMAT,
        }
        return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:24]


def _digest(result: Any) -> str:
    return hashlib.sha256(canonical_json(result).encode()).hexdigest()


@dataclass
class CellCache:
    """Results of cells on disk under ``directory`` (see the module docstring for the format)."""

    directory: Path
    corrupt: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, cell: Cell) -> Path:
        return self.directory / f"{cell.key}.json"

    def load(self, cell: Cell) -> dict[str, Any] | None:
        """The cached entry of ``cell`` (with ``result`` and ``seconds``), or None if absent or corrupt."""
        path = self.path(cell)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            valid = entry["key"] == cell.key and entry["digest"] == _digest(entry["result"])
        except (OSError, ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            self.corrupt.append(path.name)
            return None
        return entry

    def store(self, cell: Cell, result: Mapping[str, Any], seconds: float) -> None:
        """Write ``result`` atomically (temporary file, fsync, rename)."""
        entry = {
            "key": cell.key,
            "function": cell.name,
            "kwargs": cell.kwargs,
            "version": kadam.__version__,
            "seconds": seconds,
            "result": result,
            "digest": _digest(result),
        }
        atomic_write(self.path(cell), json.dumps(entry, sort_keys=True))


def _call(
    function: Callable[..., Any], kwargs: Mapping[str, Any], progress: Callable[[int, int], None] | None
) -> tuple[Any, float]:
    """Run one cell's function; returns (result, seconds).

    ``progress`` is passed as the ``progress`` argument when the function accepts one and ``kwargs`` does not
    set it already (a cell's own ``progress`` value is never replaced).
    """
    arguments = dict(kwargs)
    if progress is not None and "progress" not in arguments and "progress" in inspect.signature(function).parameters:
        arguments["progress"] = progress
    started = time.perf_counter()
    result = function(**arguments)
    return result, time.perf_counter() - started


def _single_threaded() -> None:
    """Worker initialiser: one intra-op thread per cell (see :class:`CellRunner`), and stdout to the null
    device, so that progress bars an experiment draws itself do not garble the parent's display (results and
    exceptions come back through the pool; warnings still reach stderr)."""
    import torch

    torch.set_num_threads(1)
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the worker


def _dask_call(function: Callable[..., Any], kwargs: Mapping[str, Any]) -> tuple[Any, float]:
    """Entry point of a Dask task: one torch intra-op thread, as in the process pool, then the cell."""
    import torch

    torch.set_num_threads(1)
    return _call(function, kwargs, None)


def _dask_client(executor: str, workers: int) -> tuple[Any, Any]:
    """A ``distributed.Client`` and the local cluster it owns: a new cluster of ``workers`` single-threaded
    processes for ``executor == "dask"``, else (client, None) connected to the scheduler at ``executor``."""
    import logging

    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ValueError("executor dask needs the distributed package: pip install 'kadam[distributed]'") from error
    if executor == "dask":
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
        return Client(cluster), cluster
    return Client(executor), None


def _worker_call(function: Callable[..., Any], kwargs: Mapping[str, Any], key: str, messages: Any) -> tuple[Any, float]:
    """Entry point of a worker process: announces the start, forwards progress through ``messages``."""
    messages.put((key, 0, 0))
    return _call(function, kwargs, lambda done, total: messages.put((key, done, total)))


class _RunProgress:
    """One bar over the whole run (in estimated seconds) and a transient bar per long cell in flight."""

    def __init__(self, console: Console, total_cost: float, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.overall = self.progress.add_task("kadam reproduce", total=max(total_cost, 1e-9))
        self.cells: dict[str, tuple[TaskID | None, float, float]] = {}  # key -> (bar, cost, fraction done)

    def __enter__(self) -> _RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def add_total(self, cost: float) -> None:
        """Grow (or, for a negative ``cost``, shrink) the overall total by ``cost`` estimated seconds."""
        task = self.progress.tasks[self.overall]
        self.progress.update(self.overall, total=(task.total or 0) + cost)

    def start(self, cell: Cell) -> None:
        if cell.key in self.cells:
            return
        bar = (
            self.progress.add_task(f"  {cell.section}: {cell.label}", total=1.0)
            if cell.cost >= _CELL_BAR_MIN_COST
            else None
        )
        self.cells[cell.key] = (bar, cell.cost, 0.0)

    def advance(self, cell: Cell, done: int, total: int) -> None:
        self.start(cell)
        bar, cost, fraction = self.cells[cell.key]
        new_fraction = min(1.0, done / total) if total > 0 else fraction
        if bar is not None:
            self.progress.update(bar, completed=new_fraction)
        self.progress.advance(self.overall, cost * (new_fraction - fraction))
        self.cells[cell.key] = (bar, cost, new_fraction)

    def finish(self, cell: Cell) -> None:
        self.start(cell)
        bar, cost, fraction = self.cells.pop(cell.key)
        if bar is not None:
            self.progress.remove_task(bar)
        self.progress.advance(self.overall, cost * (1.0 - fraction))


@dataclass
class CellRunner:
    """Runs cells through a :class:`CellCache`, in this process (``jobs == 1``) or in ``jobs`` processes.

    Every cell runs with one torch intra-op thread, in this process as in the workers: tiny models gain
    nothing from more (on a busy machine they lose time to thread contention), and a cell's numbers
    then do not depend on ``jobs``. Parallelism comes from running cells side by side. Use inside
    ``with runner.session(estimated_seconds):``, which owns the progress display and the worker pool.
    """

    cache: CellCache
    jobs: int = 1
    executor: str = "process"
    console: Console = field(default_factory=Console)
    show_progress: bool = True
    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be ≥ 1, got {self.jobs}")
        parse_executor(self.executor)
        self._progress: _RunProgress | None = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._client: Any = None
        self._messages: Any = None

    @contextlib.contextmanager
    def session(self, estimated_cost: float) -> Iterator[None]:
        """Progress display (total: ``estimated_cost`` seconds of cells to compute) and, if ``jobs`` > 1, the pool
        (or, for a Dask executor, the client and its local cluster)."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._progress = _RunProgress(self.console, estimated_cost, self.show_progress)
        with contextlib.ExitStack() as stack:
            stack.callback(torch.set_num_threads, threads)
            stack.enter_context(self._progress)
            if self.executor != "process":
                self._client, cluster = _dask_client(self.executor, self.jobs)
                if cluster is not None:
                    stack.callback(cluster.close)
                stack.callback(self._client.close)
            elif self.jobs > 1:
                context = multiprocessing.get_context("spawn")
                self._messages = stack.enter_context(context.Manager()).Queue()
                self._pool = stack.enter_context(
                    concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_single_threaded)
                )
                stack.callback(self._pool.shutdown, wait=True, cancel_futures=True)
            try:
                yield
            finally:
                self._progress = self._pool = self._messages = self._client = None

    def adjust_total(self, cost: float) -> None:
        """Correct the run's estimated total by ``cost`` seconds (e.g. once phase-2 cells are known)."""
        self._active_progress().add_total(cost)

    def pending_cost(self, cells: Iterable[Cell]) -> float:
        """Estimated seconds of the cells among ``cells`` that the cache cannot serve."""
        return sum(cell.cost for cell in cells if not self.cache.path(cell).exists())

    def _active_progress(self) -> _RunProgress:
        if self._progress is None:
            raise RuntimeError("CellRunner methods must be called inside `with runner.session(...)`")
        return self._progress

    def run(self, cells: Sequence[Cell]) -> dict[str, Any]:
        """Results of ``cells`` by key: from the cache where valid, computed (and cached) otherwise."""
        progress = self._active_progress()
        results: dict[str, Any] = {}
        to_compute: list[Cell] = []
        for cell in {cell.key: cell for cell in cells}.values():
            entry = self.cache.load(cell)
            if entry is None:
                to_compute.append(cell)
            else:
                results[cell.key] = entry["result"]
                self.seconds[cell.key] = entry["seconds"]
                self.cached.append(cell.key)
        progress.add_total(sum(c.cost for c in to_compute if self.cache.path(c).exists()))  # corrupt files
        if self._client is not None:
            self._run_dask(to_compute, results)
        elif self._pool is None:
            for cell in to_compute:
                progress.start(cell)
                result, seconds = _call(cell.function, cell.kwargs, lambda d, t, c=cell: progress.advance(c, d, t))
                self._finish(cell, result, seconds, results)
        else:
            self._run_parallel(to_compute, results)
        return results

    def run_phases(
        self, cells: Sequence[Cell], followup: Callable[[Mapping[str, Any]], Sequence[Cell]], followup_cost: float = 0.0
    ) -> tuple[dict[str, Any], list[Cell]]:
        """Run ``cells``, then ``followup(results)`` again and again until it asks for no cell not yet run
        (a later phase may depend on an earlier one's results). ``followup_cost`` is the estimated seconds of
        the follow-up phases before any has run (the ETA). Returns the results by key and every follow-up
        cell (each once, in the order first asked for)."""
        results = self.run(cells)
        asked: dict[str, Cell] = {}
        estimate = followup_cost
        while True:
            new = [cell for cell in followup(results) if cell.key not in results and cell.key not in asked]
            if not new:
                break
            asked.update((cell.key, cell) for cell in new)
            cost = self.pending_cost(new)
            self.adjust_total(cost - min(estimate, cost))
            estimate = max(0.0, estimate - cost)
            results.update(self.run(new))
        self.adjust_total(-estimate)
        return results, list(asked.values())

    def _finish(self, cell: Cell, result: Any, seconds: float, results: dict[str, Any]) -> None:
        self.cache.store(cell, result, seconds)
        results[cell.key] = json.loads(json.dumps(result))  # exactly what a cached run would return
        self.seconds[cell.key] = seconds
        self.computed.append(cell.key)
        self._active_progress().finish(cell)

    def _run_parallel(self, cells: Sequence[Cell], results: dict[str, Any]) -> None:
        assert self._pool is not None
        by_key = {cell.key: cell for cell in cells}
        longest_first = sorted(cells, key=lambda cell: -cell.cost)  # shortens the makespan (LPT scheduling)
        futures = {
            self._pool.submit(_worker_call, c.function, c.kwargs, c.key, self._messages): c for c in longest_first
        }
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
            )
            self._drain(by_key)
            for future in done:
                result, seconds = future.result()
                self._finish(futures[future], result, seconds, results)

    def _run_dask(self, cells: Sequence[Cell], results: dict[str, Any]) -> None:
        from distributed import as_completed

        longest_first = sorted(cells, key=lambda cell: -cell.cost)
        futures = {}
        for cell in longest_first:
            self._active_progress().start(cell)
            future = self._client.submit(_dask_call, cell.function, dict(cell.kwargs), key=f"kadam-cell-{cell.key}")
            futures[future] = cell
        for future in as_completed(futures):
            result, seconds = future.result()
            self._finish(futures[future], result, seconds, results)

    def _drain(self, by_key: Mapping[str, Cell]) -> None:
        while True:
            try:
                key, done, total = self._messages.get_nowait()
            except queue.Empty:
                return
            if key in by_key and key not in self.seconds:
                self._active_progress().advance(by_key[key], done, total)
