/**
 * Terminal output of the demo: colours only on a terminal that wants them. `hasColors()` honours
 * NO_COLOR, FORCE_COLOR and NODE_DISABLE_COLORS; piped or redirected output (not a TTY) is plain.
 */
const useColor = process.stdout.isTTY === true && process.stdout.hasColors();
const code = (n: number) => (useColor ? `\x1b[${n}m` : '');

export const c = { dim: code(2), red: code(31), green: code(32), yellow: code(33), cyan: code(36), reset: code(0) };

/** One line of the story: who speaks (padded), in their colour, then what happened. */
export function say(who: string, color: string, text: string): void {
  console.log(`${color}${who.padEnd(13)}${c.reset} ${text}`);
}
