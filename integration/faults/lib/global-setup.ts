/**
 * Global setup of the `faults` vitest project: empties the rows file before the first scenario;
 * after the last one writes reports/faults.json and prints the one table of the run.
 */
import { resetRows, SIZE, writeReport } from './report.js';

export function setup(): void {
  resetRows();
}

export function teardown(): void {
  const { report, table } = writeReport();
  if (report.rows.length === 0) return;
  const t = report.totals;
  console.log(
    [
      '',
      `Busbar fault suite (${SIZE} size) — ${report.rows.length} scenario rows, reports/faults.json`,
      table,
      `totals: published ${t.published}, lost ${t.lost}, unexpected ${t.unexpected}, duplicate effects ${t.duplicateEffects}, ` +
        `late runs ${t.lateRuns}, plain re-runs ${t.plainReruns}, recovered ${t.recovered}, scenario time ${(t.timeMs / 1000).toFixed(0)} s`,
      report.clean ? 'CLEAN: lost = unexpected = duplicate effects = late runs = 0 in every row' : 'NOT CLEAN: see the rows above',
      '',
    ].join('\n'),
  );
}
