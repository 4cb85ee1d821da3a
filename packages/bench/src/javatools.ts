/** The brokers' own Java benchmark tools, fetched from Maven Central with `mvn` into packages/bench/.cache. */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './brokers.js';

/**
 * Returns a classpath (`dir/*`) holding `artifact` (`group:name:version`) and its runtime
 * dependencies, fetching them with `mvn dependency:copy-dependencies` on first use; `undefined`
 * (with the reason logged) when java/mvn are missing or the fetch fails.
 */
export function toolClasspath(cacheName: string, artifact: string, log: (m: string) => void): string | undefined {
  const dir = join(repoRoot, 'packages', 'bench', '.cache', cacheName);
  const lib = join(dir, 'lib');
  if (existsSync(lib) && readdirSync(lib).some((f) => f.endsWith('.jar'))) return `${lib}/*`;
  if (spawnSync('java', ['-version'], { stdio: 'ignore' }).status !== 0 || spawnSync('mvn', ['-v'], { stdio: 'ignore' }).status !== 0) {
    log(`bench: ${artifact}: java and mvn are needed for the broker's own benchmark tool; skipped`);
    return undefined;
  }
  const [g, a, v] = artifact.split(':');
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, 'pom.xml'),
    `<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion><groupId>busbar.bench</groupId><artifactId>${cacheName}</artifactId><version>1</version>
<dependencies><dependency><groupId>${g}</groupId><artifactId>${a}</artifactId><version>${v}</version></dependency></dependencies></project>\n`,
  );
  log(`bench: fetching ${artifact} from Maven Central (once) …`);
  const r = spawnSync('mvn', ['-q', '-B', 'dependency:copy-dependencies', '-DincludeScope=runtime', '-DoutputDirectory=lib'], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (r.status !== 0) {
    log(`bench: fetching ${artifact} failed: ${(r.stdout + r.stderr).split('\n').find((l) => l.includes('ERROR')) ?? `exit ${r.status}`}`);
    return undefined;
  }
  return `${lib}/*`;
}
