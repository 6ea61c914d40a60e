"""A shared MLflow tracking server for a lab: ``mlflow server`` on PostgreSQL, artifacts proxied.

    python -m nnlab.server --backend-store-uri postgresql+psycopg://mlflow@db-host/mlflow \\
                           --artifacts-destination /shared/nnlab/mlartifacts
    python -m nnlab.server --pgdata ~/nnlab-server/pg --artifacts-destination ~/nnlab-server/mlartifacts

The second form runs a private PostgreSQL (``initdb`` on first use, started and stopped with the
server) for a lab without a database administrator. Either way the server:

* binds to 127.0.0.1 unless told otherwise (``--host``); a non-loopback host needs ``--auth``
  (MLflow's basic auth, ``pip install 'nnlab[server]'``) or an explicit ``--no-auth``;
* proxies artifacts (``--artifacts-destination``): jobs upload through HTTP and need no access to
  the artifact folder (nor to the database);
* sizes each worker's SQLAlchemy pool so that all workers together stay under PostgreSQL's
  ``max_connections`` (MLflow's workers each hold their own pool);
* creates the schema once, before its workers start (many jobs opening a fresh store directly race
  on schema creation; through the server they never do).

Jobs then record with ``tracking.uri=http://HOST:PORT`` (or ``$MLFLOW_TRACKING_URI``); with auth, each
user exports ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (read by MLflow's client
from the environment, never part of nnlab's config, so never logged as params).
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

PG_USER, PG_DATABASE = "nnlab", "mlflow"  # superuser and database of a private PostgreSQL
PG_RESERVED = 10  # connections kept free for psql, backups and PostgreSQL's superuser slots
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


class ServerError(RuntimeError):
    """The server cannot start as asked (a one-line reason naming the value)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- connection pools ---------------------------------------------------------------------------
def pool_env(workers: int, pool_size: int, max_overflow: int, max_connections: int = 100) -> dict[str, str]:
    """The environment that sizes each server worker's SQLAlchemy pool (MLflow reads it).

    Every worker holds up to ``pool_size + max_overflow`` connections, so the server may open
    ``workers * (pool_size + max_overflow)``; that must stay ``PG_RESERVED`` below PostgreSQL's
    ``max_connections`` (default 100).
    """
    if workers < 1 or pool_size < 1 or max_overflow < 0:
        raise ServerError(f"workers={workers}, pool_size={pool_size}, max_overflow={max_overflow}: "
                          "workers and pool size must be >= 1, max overflow >= 0")
    total = workers * (pool_size + max_overflow)
    if total > max_connections - PG_RESERVED:
        raise ServerError(f"{workers} workers x (pool_size={pool_size} + max_overflow={max_overflow}) = {total} "
                          f"connections > max_connections={max_connections} - {PG_RESERVED} reserved: "
                          "lower --workers, --pool-size or --max-overflow, or raise PostgreSQL's max_connections")
    return {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(pool_size),
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(max_overflow),
            "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "3600"}


# --- a private PostgreSQL -----------------------------------------------------------------------
@dataclass
class Postgres:
    """A PostgreSQL cluster in ``data``, listening on 127.0.0.1:``port`` only (no Unix socket)."""

    data: Path
    port: int

    @property
    def passfile(self) -> Path:
        return self.data.parent / f"{self.data.name}.pgpass"  # outside the data folder: root-owned, 0600

    @property
    def uri(self) -> str:
        """SQLAlchemy URI without the password (libpq reads it from ``PGPASSFILE``, see ``env``)."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the `postgres` system user then
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))  # Debian keeps them off PATH
    if versions:
        return str(versions[-1])
    raise ServerError(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)")


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
        raise ServerError(f"{what} failed (exit {done.returncode}): {last[0]}")


def init_postgres(data: Path) -> None:
    """``initdb`` a new cluster in ``data`` (password auth, superuser ``nnlab``, random password)."""
    data = data.expanduser().resolve()
    data.parent.mkdir(parents=True, exist_ok=True)
    passfile = Postgres(data, 0).passfile
    password = secrets.token_urlsafe(24)
    pwfile = data.parent / f".{data.name}.initpw"
    pwfile.write_text(password + "\n")
    try:
        if os.geteuid() == 0:  # the postgres user must own its folder and reach it
            import pwd

            pg = pwd.getpwnam("postgres")
            data.mkdir(mode=0o700, exist_ok=True)
            for path in (data, pwfile):
                os.chown(path, pg.pw_uid, pg.pw_gid)
            data.parent.chmod(data.parent.stat().st_mode | 0o711)
        _run(_as_postgres_user([_pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth=scram-sha-256",
                                f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale"]), "initdb")
    finally:
        pwfile.unlink(missing_ok=True)
    passfile.write_text(f"127.0.0.1:*:*:{PG_USER}:{password}\n")
    passfile.chmod(0o600)


@contextlib.contextmanager
def local_postgres(data: Path, port: int | None = None, max_connections: int = 100) -> Iterator[Postgres]:
    """Start the cluster in ``data`` (``initdb`` first if there is none), create the ``mlflow``
    database if missing, yield it, and stop it (fast shutdown) on the way out."""
    data = data.expanduser().resolve()
    pg = Postgres(data, port or free_port())
    if not (data / "PG_VERSION").exists():
        init_postgres(data)
    elif not pg.passfile.exists():
        raise ServerError(f"{pg.passfile} is missing: nnlab.server keeps the password of the cluster in "
                          f"{data} there; restore it or start with a new --pgdata")
    log = data.parent / f"{data.name}.log"
    if os.geteuid() == 0:
        log.touch()
        import pwd

        entry = pwd.getpwnam("postgres")
        os.chown(log, entry.pw_uid, entry.pw_gid)
    options = (f"-c listen_addresses=127.0.0.1 -p {pg.port} -c unix_socket_directories='' "
               f"-c max_connections={max_connections}")
    pg_ctl = _pg_bin("pg_ctl")
    _run(_as_postgres_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]),
         f"PostgreSQL in {data} (log: {log})")
    try:
        _create_database(pg)
        yield pg
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


def _create_database(pg: Postgres) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=pg.port, user=PG_USER, dbname="postgres",
                         passfile=str(pg.passfile), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {PG_DATABASE}")


# --- the MLflow server --------------------------------------------------------------------------
@dataclass
class ServerConfig:
    """What ``mlflow server`` is started with (see ``python -m nnlab.server --help``)."""

    backend_store_uri: str
    artifacts_destination: Path
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 4
    pool_size: int = 5
    max_overflow: int = 5
    max_connections: int = 100
    allowed_hosts: str | None = None
    auth: bool = False
    no_auth: bool = False  # a non-loopback host without auth: only behind an authenticating proxy
    auth_db: str | None = None
    default_permission: str = "EDIT"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def check(config: ServerConfig) -> None:
    """Refuse, with one line naming the value, what would start an open or broken server."""
    if not is_loopback(config.host) and not config.auth and not config.no_auth:
        raise ServerError(f"--host {config.host} shares the server beyond this machine: add --auth "
                          "(basic auth, pip install 'nnlab[server]') or, behind your own proxy, --no-auth")
    if config.backend_store_uri.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ServerError(f"{config.backend_store_uri.split('@')[-1]}: PostgreSQL needs psycopg: "
                              "pip install 'nnlab[server]'") from None
        if not config.backend_store_uri.startswith("postgresql+psycopg://"):
            raise ServerError(f"--backend-store-uri {config.backend_store_uri.split('://')[0]}://...: "
                              "use postgresql+psycopg:// (psycopg 3, what nnlab[server] installs)")
        pool_env(config.workers, config.pool_size, config.max_overflow, config.max_connections)
    if config.auth:
        missing = [k for k in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD") if not os.environ.get(k)]
        if missing:
            raise ServerError(f"--auth needs {' and '.join(missing)} in the environment (MLflow has no default "
                              "admin password; the secret key signs the UI's sessions)")
        if config.default_permission not in PERMISSIONS:
            raise ServerError(f"--default-permission {config.default_permission}: choose one of {', '.join(PERMISSIONS)}")


def _auth_ini(config: ServerConfig, folder: Path) -> Path:
    auth_db = config.auth_db or f"sqlite:///{(folder / 'basic_auth.db').resolve()}"
    path = folder / "basic_auth.ini"
    path.write_text("[mlflow]\n"
                    f"default_permission = {config.default_permission}\n"
                    f"database_uri = {auth_db}\n"
                    "admin_username = admin\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    path.chmod(0o600)
    return path


def server_command(config: ServerConfig) -> tuple[list[str], dict[str, str]]:
    """(``mlflow server ...`` argv, extra environment) for ``config``."""
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "server", "--host", config.host, "--port", str(config.port),
           "--workers", str(config.workers), "--backend-store-uri", config.backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", str(config.artifacts_destination)]
    if config.allowed_hosts:
        cmd += ["--allowed-hosts", config.allowed_hosts]
    env = {}
    if config.backend_store_uri.startswith("postgresql"):
        env.update(pool_env(config.workers, config.pool_size, config.max_overflow, config.max_connections))
    if config.auth:
        cmd += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(_auth_ini(config, config.artifacts_destination.parent))
    return cmd, env


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Return once ``url/health`` answers; raise ServerError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"mlflow server exited with status {process.returncode} before answering on {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise ServerError(f"mlflow server did not answer on {url}/health within {timeout:.0f} s")


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen


@contextlib.contextmanager
def tracking_server(config: ServerConfig, env: dict[str, str] | None = None, log: Path | None = None,
                    timeout: float = 120) -> Iterator[RunningServer]:
    """Run ``mlflow server`` (its own process group) until the block ends; yield its URL and process.

    ``env`` is added to the server's environment (``PGPASSFILE`` of a private PostgreSQL, ...);
    ``log`` receives its output (default: discarded).
    """
    check(config)
    config.artifacts_destination.mkdir(parents=True, exist_ok=True)
    cmd, extra = server_command(config)
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(cmd, env={**os.environ, **extra, **(env or {})}, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(config.url, process, timeout)
        yield RunningServer(config.url, process)
    finally:
        stop(process)
        if log is not None:
            out.close()


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process's group (the server and its workers), SIGKILL what is left after ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their supervisor
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --- the command line ---------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nnlab.server", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    store = p.add_mutually_exclusive_group(required=True)
    store.add_argument("--backend-store-uri", help="postgresql+psycopg://USER@HOST:PORT/DB (password: ~/.pgpass "
                       "or PGPASSWORD), or sqlite:///FILE for a trial")
    store.add_argument("--pgdata", type=Path, help="run a private PostgreSQL in this folder (initdb on first use)")
    p.add_argument("--artifacts-destination", type=Path, required=True, help="folder the server stores artifacts in")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="TCP port to listen on (default 5000; jobs then record "
                   "to http://HOST:PORT)")
    p.add_argument("--allowed-hosts", help="Host headers accepted, comma-separated (replaces MLflow's default "
                   "of loopback + private ranges): the names jobs use, e.g. tracking-host,tracking-host:5000")
    p.add_argument("--workers", type=int, default=4, help="server worker processes (default 4)")
    p.add_argument("--pool-size", type=int, default=5, help="database connections kept per worker (default 5)")
    p.add_argument("--max-overflow", type=int, default=5, help="extra connections per worker under load (default 5)")
    p.add_argument("--max-connections", type=int, default=100, help="PostgreSQL's max_connections (default 100)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--auth", action="store_true", help="MLflow basic auth (needs MLFLOW_FLASK_SERVER_SECRET_KEY "
                      "and MLFLOW_AUTH_ADMIN_PASSWORD in the environment)")
    auth.add_argument("--no-auth", action="store_true", help="serve a non-loopback --host without auth "
                      "(only behind your own authenticating proxy)")
    p.add_argument("--auth-db", help="where the users live (default sqlite beside the artifacts folder)")
    p.add_argument("--default-permission", default="EDIT", help="what every user may do with others' "
                   "experiments: EDIT (default: a lab's sweeps share experiments), READ, MANAGE, NO_PERMISSIONS")
    return p.parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM; 0 on a clean stop, 2 on refused input."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        config = ServerConfig(args.backend_store_uri or "postgresql+psycopg://",
                              args.artifacts_destination.expanduser().resolve(), args.host, args.port,
                              args.workers, args.pool_size, args.max_overflow, args.max_connections,
                              args.allowed_hosts, args.auth, args.no_auth, args.auth_db, args.default_permission)
        check(config)  # before anything is created
        with contextlib.ExitStack() as stack:
            env: dict[str, str] = {}
            if args.pgdata is not None:
                pg = stack.enter_context(local_postgres(args.pgdata, max_connections=args.max_connections))
                config.backend_store_uri, env = pg.uri, pg.env
                print(f"nnlab.server: PostgreSQL in {args.pgdata} on 127.0.0.1:{pg.port}", file=sys.stderr)
            server = stack.enter_context(tracking_server(config, env))
            url = server.url
            shown = url if is_loopback(args.host) else f"http://{socket.getfqdn()}:{args.port}"
            print(f"nnlab.server: tracking server on {url}  (Ctrl-C stops it)\n"
                  f"  record a sweep:  python -m nnlab.run -m ... tracking.uri={shown}\n"
                  f"  open the UI:     {shown}", file=sys.stderr, flush=True)
            server.process.wait()
            print(f"nnlab.server: mlflow server exited with status {server.process.returncode}", file=sys.stderr)
            return 1
    except ServerError as err:
        print(f"nnlab.server: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnlab.server: stopped", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
