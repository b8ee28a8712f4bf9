/**
 * A YAML writer for the small subset cloud-config needs: mappings, sequences, strings, numbers,
 * booleans. No YAML library is a dependency, and none is needed to write (only to read).
 *
 * Every one-line string is written double-quoted with JSON escapes (a JSON string is a valid YAML
 * double-quoted scalar), so nothing is ever read back as a number, a boolean, null, a date or an
 * octal mode by accident ("0600" stays a string). A multi-line string that is plain printable
 * ASCII ending in exactly one newline is written as a literal block (`|`) so PEM files and
 * configs stay readable; any other multi-line string is double-quoted too.
 */
export type YamlValue = string | number | boolean | readonly YamlValue[] | { readonly [key: string]: YamlValue };

const INDENT = '  ';
const KEY_RE = /^[A-Za-z_][A-Za-z0-9_-]*$/;
/** Plain words YAML 1.1 (PyYAML, so cloud-init) reads as booleans or null: quoted when used as keys. */
const RESERVED_RE = /^(y|n|yes|no|on|off|true|false|null)$/i;

function isBlockable(s: string): boolean {
  return (
    s.includes('\n') &&
    s.endsWith('\n') &&
    !s.endsWith('\n\n') &&
    /^[\x20-\x7e\n]*$/.test(s) &&
    // A first line that starts with a space would need an indentation indicator; keep it simple.
    !s.startsWith(' ') &&
    // Lines of only spaces before the end are kept, but they make a block hard to read: quote it.
    !/\n +\n/.test(s)
  );
}

function scalar(v: string | number | boolean, indent: string): string {
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error(`yaml: ${v} is not a finite number`);
    return String(v);
  }
  if (isBlockable(v)) {
    const body = v
      .slice(0, -1)
      .split('\n')
      .map((l) => (l === '' ? '' : indent + INDENT + l))
      .join('\n');
    return `|\n${body}`;
  }
  return JSON.stringify(v);
}

function key(k: string): string {
  return KEY_RE.test(k) && !RESERVED_RE.test(k) ? k : JSON.stringify(k);
}

function isScalar(v: YamlValue): v is string | number | boolean {
  return typeof v !== 'object';
}

function emit(v: YamlValue, indent: string): string[] {
  if (isScalar(v)) return [scalar(v, indent)];
  if (Array.isArray(v)) {
    const items = v as readonly YamlValue[];
    if (items.length === 0) return ['[]'];
    const lines: string[] = [];
    for (const item of items) {
      if (isScalar(item)) {
        lines.push(`${indent}- ${scalar(item, indent)}`);
      } else if (Array.isArray(item)) {
        // A nested sequence (runcmd's argv form): written inline as a flow sequence of scalars.
        const inner = item as readonly YamlValue[];
        if (!inner.every((x) => isScalar(x) && !(typeof x === 'string' && x.includes('\n')))) {
          throw new Error('yaml: a nested sequence may hold only one-line scalars');
        }
        lines.push(`${indent}- [${inner.map((x) => scalar(x as string | number | boolean, indent)).join(', ')}]`);
      } else {
        const sub = emitMap(item as { readonly [key: string]: YamlValue }, indent + INDENT);
        if (sub.length === 0) lines.push(`${indent}- {}`);
        else lines.push(`${indent}- ${sub[0]!.slice(indent.length + INDENT.length)}`, ...sub.slice(1));
      }
    }
    return lines;
  }
  return emitMap(v as { readonly [key: string]: YamlValue }, indent);
}

function emitMap(m: { readonly [key: string]: YamlValue }, indent: string): string[] {
  const lines: string[] = [];
  for (const [k, v] of Object.entries(m)) {
    if (isScalar(v)) {
      lines.push(`${indent}${key(k)}: ${scalar(v, indent)}`);
    } else if (Array.isArray(v) && v.length === 0) {
      lines.push(`${indent}${key(k)}: []`);
    } else if (!Array.isArray(v) && Object.keys(v).length === 0) {
      lines.push(`${indent}${key(k)}: {}`);
    } else {
      lines.push(`${indent}${key(k)}:`, ...emit(v, indent + INDENT));
    }
  }
  return lines;
}

/** The YAML text of a mapping, one trailing newline. */
export function toYaml(doc: { readonly [key: string]: YamlValue }): string {
  return emitMap(doc, '').join('\n') + '\n';
}
