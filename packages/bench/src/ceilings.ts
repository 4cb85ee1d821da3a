/** Broker ceilings: the broker's own benchmark tool, and Busbar as a fraction of it. */
import type { Target } from './impl.js';
import type { BenchReport, Row } from './report.js';

/** Runs the ceiling tools the target has (see the target's `ceiling`). */
export async function runCeilings(
  target: Target,
  rows: readonly Row[],
  runId: string,
  log: (m: string) => void,
): Promise<BenchReport['ceilings']> {
  if (!target.ceiling) return [];
  try {
    const c = await target.ceiling(runId);
    if (!c) return [];
    const mine = rows.filter((r) => r.transport === target.name && r.scenario === c.busbarScenario);
    const row = mine.find((r) => r.payloadBytes === 256) ?? mine[0];
    const busbar = row?.subjects.busbar?.median ?? Number.NaN;
    return [
      {
        transport: target.name,
        tool: c.tool,
        what: c.what,
        msgPerSec: c.msgPerSec,
        busbarScenario: c.busbarScenario,
        busbarMsgPerSec: busbar,
        fraction: busbar / c.msgPerSec,
      },
    ];
  } catch (e) {
    log(`bench: ${target.name} ceiling failed: ${e instanceof Error ? e.message : String(e)}`);
    return [];
  }
}
