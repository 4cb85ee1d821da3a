#!/usr/bin/env node
/**
 * `pnpm bench:ab <git-ref>`: the working tree (B) against another commit (A), on the same brokers,
 * alternating the two builds' bench runs A B A B … so that machine drift hits both. Prints, per
 * scenario, transport and Busbar subject, the median of A, the median of B, B ÷ A, the raw-vs-raw
 * noise band the bench computes in every run (`raw-2` ÷ `raw`, per round, over every run of both
 * builds), and a verdict: a figure has regressed only if B's median lies outside that band on the
 * worse side. packages/bench/README.md ("A/B against another commit") explains it.
 *
 * A is exported with `git archive` into a directory of its own (by commit, reused by later calls),
 * installed with `pnpm install --frozen-lockfile` and built with `tsc -b`; B is built with `tsc -b`
 * where it stands. Nothing else in the repository is touched.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const BENCH = join('packages', 'bench', 'dist', 'main.js');
const READY = '.busbar-ab-ready';

const HELP = `Usage: pnpm bench:ab <git-ref> [--transports memory,redis-streams,rabbitmq,kafka] [--rounds N]
                     [--scenarios s1,s3,…] [--payload 256] [--scale F] [--inner-rounds K] [--warmup W] [--json FILE]
                     [--peers] [--dir DIR] [--rebuild] [--no-build] [--from RUNS-DIR]

  <git-ref>        the baseline A (a commit, branch, tag, HEAD~1 …); B is the working tree as it is
  --transports L   transports to measure (default memory); passed to the bench as --only
  --rounds N       bench runs per build, alternating A B A B … (default 5; fewer only for a smoke test)
  --scenarios L    bench scenarios (default: the bench's default, s1–s5)
  --payload L      payload sizes in bytes (default: the bench's default, 256)
  --scale F        the bench's --scale (message counts and latency durations × F)
  --inner-rounds K bench rounds inside each run (default 1: one figure per run and subject)
  --warmup W       untimed A B pairs first, their figures discarded (default 1: the first run of a
                   sitting meets cold brokers, caches and CPU frequency; 0 to skip)
  --json FILE      write every figure and verdict as JSON (shape: packages/bench/README.md)
  --peers          run the bench's peers too (slower; their figures are not compared). Needed for
                   Kafka's busbar-plt when A predates the bench keeping it under --no-peers
  --dir DIR        where A is exported (default $TMPDIR/busbar-ab/<commit>; reused when built)
  --rebuild        export, install and build A again even if DIR holds a build
  --no-build       do not run tsc -b in the working tree (it is built already)
  --sittings F1 F2 …  build and run nothing: combine the --json files of separate sittings; a figure
                   has regressed when it regressed in every one of them
  --from RUNS-DIR  build and run nothing: print the table of an earlier call's runs (the directory it
                   named; its A-<n>.json and B-<n>.json)
`;

function fail(message) {
  process.stderr.write(`bench:ab: ${message}\n`);
  process.exit(2);
}

/** Runs a command to completion with inherited output; throws on a non-zero exit. */
function sh(cmd, args, cwd, label = `${cmd} ${args.join(' ')}`) {
  const r = spawnSync(cmd, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`${label} failed (exit ${r.status ?? r.signal}) in ${cwd}`);
}

/** Runs a command and returns its trimmed stdout. */
function out(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

function median(values) {
  const s = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = (s.length - 1) / 2;
  return (s[Math.floor(mid)] + s[Math.ceil(mid)]) / 2;
}

function summary(values) {
  const s = values.filter(Number.isFinite);
  return { median: median(s), min: s.length ? Math.min(...s) : Number.NaN, max: s.length ? Math.max(...s) : Number.NaN, samples: values };
}

/** Compact figure for the table (the bench's own formatting rules). */
function fmt(n, unit) {
  if (!Number.isFinite(n)) return '–';
  if (unit === 'msg/s') {
    if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
    if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
    if (n >= 1e3) return `${(n / 1e3).toFixed(2)}k`;
    return n.toFixed(0);
  }
  if (unit === 'B/msg') return n.toFixed(0);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

/** Builds A (exported from git at `commit`) into `dir`, unless a finished build is there. */
function prepareBaseline(commit, dir, rebuild) {
  if (existsSync(join(dir, READY)) && !rebuild) {
    process.stderr.write(`bench:ab: A is built already in ${dir} (--rebuild to build it again)\n`);
    return;
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  process.stderr.write(`bench:ab: exporting ${commit.slice(0, 12)} into ${dir}\n`);
  const archive = spawnSync('git', ['archive', '--format=tar', commit], { cwd: ROOT, maxBuffer: 1 << 30 });
  if (archive.status !== 0) throw new Error(`git archive ${commit} failed: ${archive.stderr.toString()}`);
  const untar = spawnSync('tar', ['-x', '-C', dir], { input: archive.stdout });
  if (untar.status !== 0) throw new Error(`tar -x failed: ${untar.stderr.toString()}`);
  process.stderr.write('bench:ab: installing A (pnpm install --frozen-lockfile)\n');
  sh('pnpm', ['install', '--frozen-lockfile', '--prefer-offline'], dir);
  process.stderr.write('bench:ab: building A (tsc -b)\n');
  sh('pnpm', ['exec', 'tsc', '-b'], dir);
  if (!existsSync(join(dir, BENCH))) throw new Error(`A has no ${BENCH} after the build (does ${commit.slice(0, 12)} have the bench?)`);
  writeFileSync(join(dir, READY), `${commit}\n`);
}

/** One bench run of one build; resolves with its parsed --json report. */
function benchRun(root, args, jsonFile, logFile) {
  return new Promise((resolvePromise, reject) => {
    const log = createWriteStream(logFile);
    const child = spawn(process.execPath, [join(root, BENCH), ...args, '--json', jsonFile], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: process.env,
    });
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      log.end();
      if (code !== 0 || !existsSync(jsonFile)) {
        const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n') : '';
        reject(new Error(`bench in ${root} exited with ${code ?? signal}; log ${logFile}:\n${tail}`));
        return;
      }
      resolvePromise(JSON.parse(readFileSync(jsonFile, 'utf8')));
    });
  });
}

/**
 * Busbar's own figures in a row: `busbar` and its variants (`busbar-plt`); in the `s1-costs` row,
 * which has no baseline, every piece it times.
 */
function busbarSubjects(row) {
  const labels = new Set([...Object.keys(row.subjects), ...Object.keys(row.errors ?? {})]);
  return [...labels].filter((label) => label.startsWith('busbar') || row.scenario === 's1-costs');
}

/**
 * Folds the runs into one line per (transport, scenario, payload, Busbar subject): A and B over
 * every round of every run, and the noise band `raw-2 ÷ raw` per round over every run of both.
 */
export function compareRuns(runs) {
  const lines = new Map();
  /** Noise samples per row (transport, scenario, payload): every run of both builds, whatever its subjects. */
  const rowNoise = new Map();
  for (const run of runs) {
    for (const row of run.report.rows) {
      const raw = row.subjects.raw?.samples ?? [];
      const raw2 = row.subjects['raw-2']?.samples ?? [];
      // Both ways: which of the two identical raw runs is the reference is arbitrary (and in a
      // one-round run raw always runs right before raw-2), so the band is symmetric around 1.
      const noise = raw2.flatMap((x, i) => [x / raw[i], raw[i] / x]).filter(Number.isFinite);
      const rowKey = `${row.transport}\u0000${row.scenario}\u0000${row.payloadBytes}`;
      rowNoise.set(rowKey, [...(rowNoise.get(rowKey) ?? []), ...noise]);
      for (const subject of busbarSubjects(row)) {
        const key = `${row.transport}\u0000${row.scenario}\u0000${row.payloadBytes}\u0000${subject}`;
        let line = lines.get(key);
        if (!line) {
          line = {
            transport: row.transport,
            scenario: row.scenario,
            name: row.name,
            payloadBytes: row.payloadBytes,
            unit: row.unit,
            higherIsBetter: row.higherIsBetter,
            subject,
            a: [],
            b: [],
            rowKey: `${row.transport}\u0000${row.scenario}\u0000${row.payloadBytes}`,
            rawA: [],
            rawB: [],
            errors: [],
          };
          lines.set(key, line);
        }
        const samples = row.subjects[subject]?.samples ?? [];
        line[run.build === 'A' ? 'a' : 'b'].push(...samples);
        line[run.build === 'A' ? 'rawA' : 'rawB'].push(...raw);
        if (row.errors?.[subject]) line.errors.push(`${run.build}: ${row.errors[subject]}`);
      }
    }
  }
  return [...lines.values()].map((l) => {
    const a = summary(l.a);
    const b = summary(l.b);
    const ratio = b.median / a.median;
    const noiseSamples = rowNoise.get(l.rowKey) ?? [];
    const noise = summary(noiseSamples);
    // Diagnostic, not part of the verdict: the same raw code in B's runs against A's (drift between them).
    const rawRatio = median(l.rawB) / median(l.rawA);
    let verdict;
    if (!Number.isFinite(ratio)) verdict = 'missing';
    else if (noiseSamples.length === 0) verdict = 'no noise band';
    else {
      const worse = l.higherIsBetter ? ratio < noise.min : ratio > noise.max;
      const better = l.higherIsBetter ? ratio > noise.max : ratio < noise.min;
      verdict = worse ? 'regressed' : better ? 'improved' : 'within noise';
    }
    const { rawA: _a, rawB: _b, rowKey: _k, ...rest } = l;
    return { ...rest, a, b, ratio, noise, rawRatio, verdict };
  });
}

/** The Markdown table of {@link compareRuns}'s lines. */
export function table(lines) {
  const rows = [
    '| transport | scenario | payload | subject | A median | B median | B ÷ A | noise band (raw-2 ÷ raw) | verdict | raw B ÷ A |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const l of lines) {
    const band = l.noise.samples.length ? `${l.noise.min.toFixed(2)}–${l.noise.max.toFixed(2)}` : '–';
    const mark = l.verdict === 'regressed' ? '❌ regressed' : l.verdict === 'improved' ? '✅ improved' : l.verdict;
    const better = l.higherIsBetter ? '↑' : '↓';
    const errors = l.errors.length ? `<br>⚠ ${l.errors.map((e) => e.slice(0, 100)).join('; ')}` : '';
    rows.push(
      `| ${l.transport} | ${l.scenario} ${better} | ${l.payloadBytes} B | ${l.subject} | ${fmt(l.a.median, l.unit)} ${l.unit} | ${fmt(l.b.median, l.unit)} ${l.unit} | ${Number.isFinite(l.ratio) ? `${l.ratio.toFixed(3)}×` : '–'} | ${band} | ${mark}${errors} | ${Number.isFinite(l.rawRatio) ? `${l.rawRatio.toFixed(3)}×` : '–'} |`,
    );
  }
  return rows.join('\n');
}

/**
 * Several sittings' --json documents side by side: B ÷ A and the verdict of each, and whether the
 * figure regressed in every sitting (the issue's rule for a regression).
 */
export function sittingsTable(docs) {
  const keyOf = (f) => `${f.transport} | ${f.scenario} ${f.higherIsBetter ? '↑' : '↓'} | ${f.payloadBytes} B | ${f.subject}`;
  const keys = [...new Set(docs.flatMap((d) => d.figures.map(keyOf)))];
  const head = `| transport | scenario | payload | subject | ${docs.map((d, i) => `sitting ${i + 1} (${d.startedAt.slice(0, 16)}) B ÷ A, verdict`).join(' | ')} | regressed in every sitting |`;
  const rows = [head, `| --- | --- | --- | --- | ${docs.map(() => '---').join(' | ')} | --- |`];
  let regressed = 0;
  for (const key of keys) {
    const found = docs.map((d) => d.figures.find((f) => keyOf(f) === key));
    const every = found.every((f) => f?.verdict === 'regressed');
    if (every) regressed++;
    const cells = found.map((f) => (f ? `${Number.isFinite(f.ratio) ? `${f.ratio.toFixed(3)}×` : '–'} ${f.verdict}` : 'not measured'));
    rows.push(`| ${key} | ${cells.join(' | ')} | ${every ? '❌ yes' : 'no'} |`);
  }
  rows.push('', `${regressed} of ${keys.length} figures regressed in every sitting.`);
  return rows.join('\n');
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      transports: { type: 'string', default: 'memory' },
      rounds: { type: 'string', default: '5' },
      scenarios: { type: 'string' },
      payload: { type: 'string' },
      scale: { type: 'string' },
      'inner-rounds': { type: 'string', default: '1' },
      warmup: { type: 'string', default: '1' },
      json: { type: 'string' },
      dir: { type: 'string' },
      peers: { type: 'boolean', default: false },
      rebuild: { type: 'boolean', default: false },
      from: { type: 'string' },
      sittings: { type: 'boolean', default: false },
      'no-build': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (values.sittings) {
    if (positionals.length < 2) fail('--sittings needs the --json files of at least two sittings');
    process.stdout.write(`${sittingsTable(positionals.map((f) => JSON.parse(readFileSync(f, 'utf8'))))}\n`);
    return;
  }
  if (positionals.length !== 1) fail(`one git ref expected (got ${positionals.length})\n\n${HELP}`);
  const ref = positionals[0];
  const rounds = Number(values.rounds);
  const inner = Number(values['inner-rounds']);
  if (!Number.isInteger(rounds) || rounds < 1) fail('--rounds must be a positive integer');
  if (!Number.isInteger(inner) || inner < 1) fail('--inner-rounds must be a positive integer');
  const warmup = Number(values.warmup);
  if (!Number.isInteger(warmup) || warmup < 0) fail('--warmup must be a non-negative integer');
  if (rounds < 5) process.stderr.write(`bench:ab: --rounds ${rounds} is below 5: a smoke test, not a verdict\n`);

  let commit;
  try {
    commit = out('git', ['rev-parse', '--verify', `${ref}^{commit}`], ROOT);
  } catch {
    fail(`"${ref}" is not a commit here`);
  }
  const head = out('git', ['describe', '--always', '--dirty', '--abbrev=12'], ROOT);
  const dir = resolve(values.dir ?? join(tmpdir(), 'busbar-ab', commit.slice(0, 12)));
  if (dir === ROOT) fail('--dir must not be the working tree');

  if (values.from) {
    const from = resolve(values.from);
    const runs = [];
    for (let r = 1; existsSync(join(from, `A-${r}.json`)); r++) {
      for (const build of ['A', 'B']) {
        const file = join(from, `${build}-${r}.json`);
        if (existsSync(file)) runs.push({ build, round: r, file, seconds: Number.NaN, report: JSON.parse(readFileSync(file, 'utf8')) });
      }
    }
    if (runs.length === 0) fail(`no A-1.json in ${from}`);
    process.stdout.write(`# bench:ab — runs of ${from} (A ${ref})\n\n${table(compareRuns(runs))}\n`);
    return;
  }
  prepareBaseline(commit, dir, values.rebuild);
  if (!values['no-build']) {
    process.stderr.write('bench:ab: building B, the working tree (tsc -b)\n');
    sh('pnpm', ['exec', 'tsc', '-b'], ROOT);
  }

  const benchArgs = ['--only', values.transports, '--rounds', String(inner), '--no-ceilings'];
  if (!values.peers) benchArgs.push('--no-peers');
  if (values.scenarios) benchArgs.push('--scenarios', values.scenarios);
  if (values.payload) benchArgs.push('--payload', values.payload);
  if (values.scale) benchArgs.push('--scale', values.scale);
  const work = mkdtempSync(join(tmpdir(), 'busbar-ab-runs-'));
  const builds = { A: dir, B: ROOT };
  const runs = [];
  const loadAtStart = loadavg();
  const startedAt = new Date().toISOString();
  process.stderr.write(
    `bench:ab: A = ${ref} (${commit.slice(0, 12)}), B = working tree (${head}); ${rounds} rounds A B …; runs in ${work}\n`,
  );
  for (let w = 1; w <= warmup; w++) {
    for (const build of ['A', 'B']) {
      const base = join(work, `warmup-${build}-${w}`);
      const t0 = Date.now();
      await benchRun(builds[build], benchArgs, `${base}.json`, `${base}.log`);
      process.stderr.write(`bench:ab: warm-up ${w}/${warmup} ${build} done in ${((Date.now() - t0) / 1000).toFixed(1)} s (discarded)\n`);
    }
  }
  for (let r = 1; r <= rounds; r++) {
    for (const build of ['A', 'B']) {
      const base = join(work, `${build}-${r}`);
      const t0 = Date.now();
      const report = await benchRun(builds[build], benchArgs, `${base}.json`, `${base}.log`);
      const seconds = (Date.now() - t0) / 1000;
      runs.push({ build, round: r, file: `${base}.json`, seconds, report });
      process.stderr.write(`bench:ab: round ${r}/${rounds} ${build} done in ${seconds.toFixed(1)} s\n`);
    }
  }
  const lines = compareRuns(runs);
  const regressed = lines.filter((l) => l.verdict === 'regressed');
  const header = [
    `# bench:ab — A ${ref} (${commit.slice(0, 12)}) vs B working tree (${head})`,
    '',
    `${startedAt}; ${rounds} runs per build alternating A B A B … after ${warmup} discarded warm-up pair(s), ${inner} bench round(s) each; ` +
      `bench ${benchArgs.join(' ')}; load at start ${loadAtStart.map((x) => x.toFixed(2)).join(' ')}. ` +
      'A and B medians over every round of every run; the noise band is min–max of raw-2 ÷ raw (taken both ways) per round over the runs of both builds. ' +
      '↑ higher is better, ↓ lower is better; "regressed" = B ÷ A outside the band on the worse side. ' +
      'raw B ÷ A: the raw baseline in B’s runs against A’s (machine drift between the builds; not part of the verdict).',
    '',
    '',
  ];
  const skipped = new Set();
  for (const run of runs) for (const t of run.report.transports) if (t.skipped) skipped.add(`${run.build}: ${t.name} — ${t.skipped}`);
  const notes = skipped.size > 0 ? `\nNot measured:\n${[...skipped].map((x) => `- ${x}`).join('\n')}\n` : '';
  process.stdout.write(`${header.join('\n')}${table(lines)}\n\n${regressed.length} regressed of ${lines.length} figures.\n${notes}`);
  if (values.json) {
    const doc = {
      schema: 'busbar-bench-ab/1',
      startedAt,
      finishedAt: new Date().toISOString(),
      a: { ref, commit, dir },
      b: { describe: head, dir: ROOT },
      options: { rounds, innerRounds: inner, warmup, bench: benchArgs },
      loadAverageAtStart: loadAtStart,
      runs: runs.map(({ report: _r, ...rest }) => rest),
      figures: lines,
    };
    writeFileSync(values.json, `${JSON.stringify(doc, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`);
    process.stderr.write(`bench:ab: wrote ${values.json}\n`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error) => {
    process.stderr.write(`bench:ab failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  });
}
