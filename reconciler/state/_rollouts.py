"""Template rollouts in waves (`template_rollouts`): where each one is, written by the run that
moves it on (`engine.rollouts` decides), resumed by the operator."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.state._base import Repository


@dataclass(frozen=True)
class RolloutRow:
    template: str  # the version rolled out, `name@version`
    wave: int  # the wave under way, from 1
    waves: int
    wave_started_s: float  # seconds since the wave began
    wave_ready_s: float | None  # seconds since every org of the wave was first seen Ready
    halted_reason: str | None
    done: bool
    halted_at: str | None = None  # ISO time, for status
    started_at: str | None = None
    orgs_done: int = 0  # live orgs with an assistant recorded on the version

    def as_view(self) -> dict[str, object]:
        return {
            "template": self.template,
            "wave": self.wave,
            "waves": self.waves,
            "halted": self.halted_reason is not None,
            "haltedReason": self.halted_reason,
            "haltedAt": self.halted_at,
            "done": self.done,
            "orgsDone": self.orgs_done,
            "startedAt": self.started_at,
        }


_SELECT = (
    "SELECT template, wave, waves,"
    " EXTRACT(EPOCH FROM now() - wave_started_at)::float8 AS wave_started_s,"
    " EXTRACT(EPOCH FROM now() - wave_ready_at)::float8 AS wave_ready_s,"
    " halted_reason, done_at IS NOT NULL AS done, halted_at::text, started_at::text,"
    " (SELECT count(DISTINCT a.org_id)::int FROM assistants a JOIN organizations o"
    "   ON o.id = a.org_id AND o.retired_at IS NULL WHERE a.template = r.template) AS orgs_done"
    " FROM template_rollouts r"
)


class RolloutReader(Repository):
    def all(self) -> dict[str, RolloutRow]:
        with self._db.read() as cur:
            rows = cur.execute(_SELECT + " ORDER BY template").fetchall()
        return {r["template"]: RolloutRow(**r) for r in rows}


class RolloutWriter(RolloutReader):
    def start(self, template: str, waves: int) -> None:
        """The rollout begins at its first wave (a second start changes nothing)."""
        with self._db.tx(1) as conn:
            conn.execute(
                "INSERT INTO template_rollouts (template, waves) VALUES (%s, %s)"
                " ON CONFLICT (template) DO NOTHING",
                (template, waves),
            )

    def ready(self, template: str, wave: int, ready: bool) -> None:
        """Every org of the wave is Ready on the version (the soak starts), or no longer."""
        with self._db.tx(1) as conn:
            conn.execute(
                "UPDATE template_rollouts SET wave_ready_at = CASE WHEN %s"
                " THEN COALESCE(wave_ready_at, now()) END, updated_at = now()"
                " WHERE template = %s AND wave = %s",
                (ready, template, wave),
            )

    def advance(self, template: str, wave: int) -> None:
        """From `wave` to the next (only from that one: two runs never skip a wave)."""
        with self._db.tx(1) as conn:
            conn.execute(
                "UPDATE template_rollouts SET wave = wave + 1, wave_started_at = now(),"
                " wave_ready_at = NULL, updated_at = now()"
                " WHERE template = %s AND wave = %s AND halted_at IS NULL",
                (template, wave),
            )

    def halt(self, template: str, reason: str) -> None:
        with self._db.tx(1) as conn:
            conn.execute(
                "UPDATE template_rollouts SET halted_at = now(), halted_reason = %s,"
                " wave_ready_at = NULL, updated_at = now()"
                " WHERE template = %s AND halted_at IS NULL",
                (reason, template),
            )

    def finish(self, template: str) -> None:
        with self._db.tx(1) as conn:
            conn.execute(
                "UPDATE template_rollouts SET done_at = COALESCE(done_at, now()),"
                " updated_at = now() WHERE template = %s",
                (template,),
            )

    def resume(self, template: str) -> str | None:
        """The operator's word: a halted rollout goes on (its wave's orgs are judged afresh).
        None when resumed, else why not."""
        with self._db.tx(1) as conn:
            row = conn.execute(
                "UPDATE template_rollouts SET halted_at = NULL, halted_reason = NULL,"
                " resumed_at = now(), wave_ready_at = NULL, updated_at = now()"
                " WHERE template = %s AND halted_at IS NOT NULL RETURNING template",
                (template,),
            ).fetchone()
            if row is not None:
                return None
            known = conn.execute(
                "SELECT done_at IS NOT NULL AS done FROM template_rollouts WHERE template = %s",
                (template,),
            ).fetchone()
        if known is None:
            return f"no rollout of {template} in Postgres"
        return f"the rollout of {template} is {'done' if known[0] else 'not halted'}"
