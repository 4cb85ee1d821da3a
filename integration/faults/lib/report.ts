/**
 * The suite's report: one row per scenario × transport, printed as one table at the end of the
 * run and written to `reports/faults.json` (shape in integration/faults/README.md).
 *
 * Test files run one at a time in their own module scope, so rows are appended to a JSON-lines
 * file as scenarios finish; the project's global setup empties it first and its teardown
 * aggregates it.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FaultRow } from './ledger.js';

/** Repository root. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** Where the JSON report goes (git-ignored). */
export const REPORT_FILE = join(ROOT, 'reports', 'faults.json');
/** Rows of the current run, one JSON object a line. */
export const ROWS_FILE = join(ROOT, 'reports', '.faults-rows.jsonl');

/** `full` behind BUSBAR_FAULTS_FULL=1, else the lighter CI size. */
export const SIZE: 'ci' | 'full' = process.env.BUSBAR_FAULTS_FULL === '1' ? 'full' : 'ci';

/** What `reports/faults.json` holds. */
export interface FaultReport {
  /** Version of this shape. */
  readonly schema: 1;
  readonly generatedAt: string;
  readonly size: 'ci' | 'full';
  readonly environment: { readonly node: string; readonly platform: string; readonly cpus: number };
  readonly rows: readonly FaultRow[];
  readonly totals: {
    readonly scenarios: number;
    readonly published: number;
    readonly lost: number;
    readonly unexpected: number;
    readonly duplicateEffects: number;
    readonly lateRuns: number;
    readonly plainReruns: number;
    readonly recovered: number;
    readonly timeMs: number;
  };
  /** lost = unexpected = duplicateEffects = lateRuns = 0 in every row. */
  readonly clean: boolean;
}

/** Empties the rows file (start of a run). */
export function resetRows(): void {
  mkdirSync(dirname(ROWS_FILE), { recursive: true });
  rmSync(ROWS_FILE, { force: true });
}

/** Reads the rows appended so far. */
export function readRows(): FaultRow[] {
  if (!existsSync(ROWS_FILE)) return [];
  return readFileSync(ROWS_FILE, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as FaultRow);
}

/** Builds the report from rows. */
export function buildReport(rows: readonly FaultRow[]): FaultReport {
  const sum = (f: (r: FaultRow) => number) => rows.reduce((s, r) => s + f(r), 0);
  const totals = {
    scenarios: rows.length,
    published: sum((r) => r.published),
    lost: sum((r) => r.lost),
    unexpected: sum((r) => r.unexpected),
    duplicateEffects: sum((r) => r.duplicateEffects),
    lateRuns: sum((r) => r.lateRuns),
    plainReruns: sum((r) => r.plainReruns),
    recovered: sum((r) => r.recovered),
    timeMs: sum((r) => r.timeMs),
  };
  return {
    schema: 1,
    generatedAt: new Date().toISOString(),
    size: SIZE,
    environment: { node: process.version, platform: `${process.platform}-${process.arch}`, cpus: cpus().length },
    rows,
    totals,
    clean: rows.every((r) => r.lost === 0 && r.unexpected === 0 && r.duplicateEffects === 0 && r.lateRuns === 0),
  };
}

const COLUMNS: readonly [string, (r: FaultRow) => string][] = [
  ['scenario', (r) => r.scenario],
  ['transport', (r) => r.transport],
  ['published', (r) => String(r.published)],
  ['handled', (r) => String(r.handled)],
  ['dead-lettered', (r) => String(r.deadLettered)],
  ['lost', (r) => String(r.lost)],
  ['recovered', (r) => String(r.recovered)],
  ['unexpected', (r) => String(r.unexpected)],
  ['dup effects', (r) => String(r.duplicateEffects)],
  ['plain re-runs', (r) => String(r.plainReruns)],
  ['time', (r) => `${(r.timeMs / 1000).toFixed(1)}s`],
  ['detection', (r) => (r.detectionMs === undefined ? '' : r.detectionMs === null ? 'never' : `${(r.detectionMs / 1000).toFixed(1)}s`)],
];

/** Renders rows as one plain-text table (also valid Markdown). */
export function formatTable(rows: readonly FaultRow[]): string {
  const cells = [COLUMNS.map(([h]) => h), ...rows.map((r) => COLUMNS.map(([, f]) => f(r)))];
  const widths = COLUMNS.map((_, i) => Math.max(...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: readonly string[]) =>
    `| ${c.map((v, i) => (i < 2 ? v.padEnd(widths[i] ?? 0) : v.padStart(widths[i] ?? 0))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i < 2 ? `${'-'.repeat(w + 2)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(cells[0] ?? []), sep, ...cells.slice(1).map(line)].join('\n');
}

/** Writes reports/faults.json from the rows file and returns the table. */
export function writeReport(): { report: FaultReport; table: string } {
  const rows = readRows();
  const report = buildReport(rows);
  mkdirSync(dirname(REPORT_FILE), { recursive: true });
  writeFileSync(REPORT_FILE, `${JSON.stringify(report, null, 2)}\n`);
  return { report, table: formatTable(rows) };
}
