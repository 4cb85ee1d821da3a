// Code blocks of a README that the outside-project check type-checks: every ```ts / ```typescript
// block, unless its info string says it is not meant to run on its own (```ts template — e.g. a
// test file that imports the reader's own helpers). Returns { line, info, code, skip }.
export function extractBlocks(markdown) {
  const blocks = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*(.*)$/.exec(lines[i]);
    if (!open) continue;
    const lang = open[1];
    const info = `${lang} ${open[2]}`.trim();
    const start = i;
    const body = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]); i++) body.push(lines[i]);
    if (lang !== 'ts' && lang !== 'typescript') continue;
    blocks.push({ line: start + 1, info, code: body.join('\n'), skip: /\btemplate\b/.test(open[2]) });
  }
  return blocks;
}
