"""`tune proxy` trusts no network: a token on every call, TLS when asked, a faithful storage.

A real `tune proxy` subprocess in front of a real PostgreSQL database; clients are tune's own
(`ProxyClient`, as a worker opens it) with the token, a wrong one or none in their environment.
A refused client gets nothing from the storage and writes nothing to it, for Optuna's calls and
tune's own; the proxy says so in one line, and so does the client. With TLS, a worker that
expects it refuses a plain-text proxy and trusts a self-signed certificate it was given.
Through the proxy, Optuna's storage calls return what the database holds: nothing added, and
tune's lock and heartbeat are their own calls, not attributes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection

from search.bookkeeping.optuna_compat import running_trials, study_id, trial_id
from search.bookkeeping.proxy import connect
from search.bookkeeping.proxy_auth import ProxyRefused
from search.bookkeeping.storage import open_storage
from tests.search.certificates import self_signed
from tests.search.reliability_support import (
    PROXY_TOKEN,
    ROOT,
    TUNE,
    Proxy,
    fast_env,
    free_port,
    make_study,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()
        print(f"--- {proxy.log.name}\n{proxy.text()[-3000:]}")  # shown when the test fails


def _client(monkeypatch: pytest.MonkeyPatch, url: str, token: str | None) -> optuna.Study:
    """A client of the proxy at `url` with `token` in its environment (none: no token)."""
    monkeypatch.delenv("TUNE_PROXY_TOKEN_FILE", raising=False)
    if token is None:
        monkeypatch.delenv("TUNE_PROXY_TOKEN", raising=False)
    else:
        monkeypatch.setenv("TUNE_PROXY_TOKEN", token)
    return connect(url)


def test_the_proxy_refuses_a_client_without_the_token_on_every_call(
    pg_url: str, tmp_path: Path, proxies: list[Proxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=2, epochs=2)
    rdb = open_storage(pg_url)
    sid = rdb.get_study_id_from_name("smoke")
    before = (rdb.get_all_studies(), rdb.get_study_user_attrs(sid), rdb.get_all_trials(sid))
    port = free_port()
    # served on every address, so the proxy warns that it speaks plain text there
    proxy = Proxy(pg_url, port, fast_env(tmp_path), tmp_path / "proxy.log", ("--host", "0.0.0.0"))
    proxies.append(proxy.start())
    url = f"grpc://127.0.0.1:{port}"
    assert "warning: serving 0.0.0.0 without TLS" in proxy.text()
    assert PROXY_TOKEN not in proxy.text()

    for token, says in ((None, "refused no token"), ("wrong-token-0123456789", "refused its")):
        storage = _client(monkeypatch, url, token)
        calls = {
            "read a study": lambda s=storage: s.get_study_id_from_name("smoke"),
            "read trials": lambda s=storage: s.get_all_trials(sid),
            "write an attr": lambda s=storage: s.set_study_user_attr(sid, "evil", 1),
            "create a study": lambda s=storage: s.create_new_study(
                [StudyDirection.MAXIMIZE], "evil"
            ),
            "take the study lock": lambda s=storage: s.control.take_lock(sid, "evil", False),
            "beat": lambda s=storage: s.control.heartbeat(1),
        }
        for what, call in calls.items():
            with pytest.raises(ProxyRefused) as refused:
                call()
            message = str(refused.value)
            assert says in message and "TUNE_PROXY_TOKEN" in message, (what, message)
            assert "\n" not in message and (token is None or token not in message)
    after = (rdb.get_all_studies(), rdb.get_study_user_attrs(sid), rdb.get_all_trials(sid))
    assert after == before  # nothing read was changed, nothing written
    log = proxy.text()
    assert "no token (first call refused: /optuna.StorageService/" in log, log
    assert "a wrong token (first call refused:" in log, log
    assert log.count("refused ") == 2, log  # one line per client and reason, not one per call

    storage = _client(monkeypatch, url, PROXY_TOKEN)  # the right token works
    assert storage.get_study_id_from_name("smoke") == sid
    storage.set_study_user_attr(sid, "fine", 1)
    assert rdb.get_study_user_attrs(sid)["fine"] == 1


def test_a_proxy_without_a_token_does_not_start(pg_url: str, tmp_path: Path) -> None:
    env = fast_env(tmp_path)
    del env["TUNE_PROXY_TOKEN"]
    done = subprocess.run(
        [*TUNE, "proxy", "--storage", pg_url, "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: tune proxy needs a token"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    env["TUNE_PROXY_TOKEN"] = "short"
    done = subprocess.run(
        [*TUNE, "proxy", "--storage", pg_url, "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "at least 16 characters" in done.stderr, done.stderr
    assert "short" not in done.stderr


def test_through_the_proxy_optunas_calls_return_what_the_database_holds(
    pg_url: str, tmp_path: Path, proxies: list[Proxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=2, epochs=2)
    rdb = open_storage(pg_url)
    port = free_port()
    proxies.append(Proxy(pg_url, port, fast_env(tmp_path), tmp_path / "proxy.log").start())
    storage = _client(monkeypatch, f"grpc://127.0.0.1:{port}", PROXY_TOKEN)
    study = optuna.load_study(study_name="smoke", storage=storage)
    sid = study_id(study)
    trial = study.ask()
    tid = trial_id(trial)

    # tune's own calls: a lease and a heartbeat, neither stored as an attribute
    assert storage.control.take_lock(sid, "a", shared=True)
    assert storage.control.take_lock(sid, "b", shared=True)
    assert storage.control.sharers(sid) == 2
    assert not storage.control.take_lock(sid, "c", shared=False)  # shared leases are held
    storage.control.give_back_lock(sid, "a")
    storage.control.give_back_lock(sid, "b")
    assert storage.control.take_lock(sid, "c", shared=False)
    assert running_trials(rdb, sid)[0].heartbeat_ago is None
    storage.control.heartbeat(tid)
    assert running_trials(rdb, sid)[0].heartbeat_ago is not None

    # what the database holds, nothing added or hidden
    assert storage.get_study_system_attrs(sid) == rdb.get_study_system_attrs(sid)
    assert storage.get_trial(tid).system_attrs == rdb.get_trial(tid).system_attrs
    # a client that writes the keys tune's protocol once used stores them, steering nothing
    storage.set_study_system_attr(sid, "tune:lock", {"holder": "x", "take": True})
    storage.set_trial_system_attr(tid, "tune:heartbeat", True)
    assert rdb.get_study_system_attrs(sid)["tune:lock"] == {"holder": "x", "take": True}
    assert rdb.get_trial(tid).system_attrs["tune:heartbeat"] is True
    storage.control.give_back_lock(sid, "c")
    assert storage.control.take_lock(sid, "d", shared=False)  # the attr held no lease


def test_tls_a_worker_that_expects_it_refuses_plain_text_and_trusts_the_certificate_given(
    pg_url: str, tmp_path: Path, proxies: list[Proxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=2, epochs=2)
    cert, key = self_signed(tmp_path, "proxy")
    env = fast_env(tmp_path)
    plain_port, tls_port = free_port(), free_port()
    proxies.append(Proxy(pg_url, plain_port, env, tmp_path / "plain.log").start())
    tls = Proxy(
        pg_url,
        tls_port,
        env,
        tmp_path / "tls.log",
        ("--tls-cert", str(cert), "--tls-key", str(key)),
    )
    proxies.append(tls.start())
    assert f"at grpcs://127.0.0.1:{tls_port}" in tls.text()

    monkeypatch.setenv("TUNE_PROXY_CA", str(cert))
    with pytest.raises(ProxyRefused, match="the server does not speak TLS"):
        _client(monkeypatch, f"grpcs://127.0.0.1:{plain_port}", PROXY_TOKEN).get_all_studies()
    storage = _client(monkeypatch, f"grpcs://127.0.0.1:{tls_port}", PROXY_TOKEN)
    assert [s.study_name for s in storage.get_all_studies()] == ["smoke"]
    with pytest.raises(ProxyRefused, match="refused its token"):  # TLS does not replace it
        _client(monkeypatch, f"grpcs://127.0.0.1:{tls_port}", "x" * 20).get_all_studies()

    monkeypatch.delenv("TUNE_PROXY_CA")  # the system's roots do not trust a self-signed one
    with pytest.raises(ProxyRefused, match="its certificate is not trusted"):
        _client(monkeypatch, f"grpcs://127.0.0.1:{tls_port}", PROXY_TOKEN).get_all_studies()
