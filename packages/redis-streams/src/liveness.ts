import type { Redis } from 'ioredis';

/**
 * @internal PINGs `conn` and tells whether it answered within `timeoutMs`. Any reply counts, an error
 * reply or a rejection by ioredis (connection already closing) included: only silence is reported.
 */
export async function answersPing(conn: Redis, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const silent = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([
      conn.ping().then(
        () => true,
        () => true,
      ),
      silent,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * @internal Settles like `command`, and calls `onSilent` whenever the command has been waiting for
 * longer than `deadlineMs` on a connection that claims to be ready (a half-open link answers nothing
 * and reports no error). The clock restarts at every `ready` (ioredis re-sends unfulfilled commands
 * after a reconnect) and after each `onSilent`.
 */
export function withDeadline<T>(conn: Redis, command: Promise<T>, deadlineMs: number, onSilent: () => void): Promise<T> {
  let since = Date.now();
  const onReady = () => {
    since = Date.now();
  };
  conn.on('ready', onReady);
  let timer: NodeJS.Timeout;
  const check = () => {
    const left = since + deadlineMs - Date.now();
    if (conn.status !== 'ready') {
      timer = setTimeout(check, deadlineMs);
    } else if (left > 0) {
      timer = setTimeout(check, left);
    } else {
      since = Date.now();
      onSilent();
      timer = setTimeout(check, deadlineMs);
    }
  };
  timer = setTimeout(check, deadlineMs);
  return command.finally(() => {
    clearTimeout(timer);
    conn.off('ready', onReady);
  });
}
