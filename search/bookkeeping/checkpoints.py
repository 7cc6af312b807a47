"""Evaluation checkpoints in an Optuna artifact store, so a retry on any machine can resume.

The trainer saves its checkpoint (`Trainer.checkpoint`, `last.pt` for tune's own) in the run
folder after every evaluation, before it reports. The objective uploads that file as an artifact
of the trial right after recording the evaluation and points the trial's ``checkpoint`` user
attr at it (`trial_record.record_checkpoint`); the artifact it replaces is deleted, so a trial
keeps only its latest checkpoint (a chain of retries too: a retry's first upload deletes its
predecessor's). Optuna copies user attrs to a heartbeat retry, so the retry finds the pointer,
downloads the file into its own run folder and runs the trainer with `job.resume`.

The store is a folder (`FileSystemArtifactStore`): `$TUNE_ARTIFACTS`, else `tune-artifacts/` in
the working folder (the folder `tune dashboard` serves by default). For workers on several
machines it must be a shared folder (NFS and the like) or the retry starts from scratch, which
it says in the worker log.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.trial import FrozenTrial

from search.bookkeeping import trial_record

ARTIFACTS_ENV = "TUNE_ARTIFACTS"
DEFAULT_ARTIFACTS = Path("tune-artifacts")


def artifacts_dir(path: str | Path | None = None) -> Path:
    """The artifact folder: `path`, else `$TUNE_ARTIFACTS`, else `tune-artifacts/`."""
    return Path(path or os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)


class CheckpointStore:
    """Uploads and fetches trial checkpoints; the folder is created on the first upload."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = artifacts_dir(path)
        self._store: FileSystemArtifactStore | None = None

    def _artifacts(self) -> FileSystemArtifactStore:
        if self._store is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._store = FileSystemArtifactStore(str(self.path))
        return self._store

    def upload(self, trial: optuna.Trial, checkpoint: str | Path, step: int) -> bool:
        """Upload the file `checkpoint` as the trial's latest checkpoint (saved at `step`).

        False when the trainer wrote no checkpoint (fakes may not). The previous checkpoint of
        the trial (or of its predecessor) is deleted once the new one is recorded.
        """
        file = Path(checkpoint)
        if not file.is_file():
            return False
        previous = trial_record.read_checkpoint(trial)
        artifact_id = upload_artifact(
            artifact_store=self._artifacts(),
            file_path=str(file),
            study_or_trial=trial,
            mimetype="application/octet-stream",
        )
        trial_record.record_checkpoint(trial, artifact_id, step)
        if previous is not None and previous[0] != artifact_id:
            # only the latest checkpoint matters; a failed delete only costs disk
            with contextlib.suppress(Exception):
                self._artifacts().remove(previous[0])
        return True

    def discard(self, trial: FrozenTrial | optuna.Trial) -> None:
        """Delete the trial's checkpoint from the store (a pruned or failed trial's is useless)."""
        mark = trial_record.read_checkpoint(trial)
        if mark is not None and self.path.is_dir():
            self._artifacts().remove(mark[0])

    def restore(
        self, trial: FrozenTrial, checkpoint: str | Path, log: Callable[[str], None] | None = None
    ) -> int | None:
        """Download the checkpoint `trial` points at into the file `checkpoint`.

        Returns its evaluation step, or None when there is none to resume from (no checkpoint
        recorded, or the file is not in this machine's artifact folder: then it says so).
        """
        mark = trial_record.read_checkpoint(trial)
        if mark is None:
            return None
        artifact_id, step = mark
        dest = Path(checkpoint)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)  # download_artifact refuses to overwrite
        try:
            download_artifact(
                artifact_store=self._artifacts(), file_path=str(dest), artifact_id=artifact_id
            )
        except Exception as exc:
            dest.unlink(missing_ok=True)
            if log is not None:
                log(
                    f"checkpoint {artifact_id} (step {step}) is not readable in {self.path} "
                    f"({type(exc).__name__}); is ${ARTIFACTS_ENV} a folder shared by all "
                    "workers? starting from scratch"
                )
            return None
        return step
