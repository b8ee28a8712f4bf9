import * as fs from 'node:fs';
import * as path from 'node:path';
import { CladnetError } from '../errors';
import type { TrustAnchor } from './cert';
import { checkPrivateMode } from './credentials';
import { HostCert, parseHostCert, parseRevocationRecord, RevocationRecord, serializeHostCert, serializeRevocationRecord } from './records';

/**
 * The issuer's ledger: every certificate and revocation this operator's network key has signed,
 * in a local append-only file beside the key (`<netkey>.issued`, JSON lines, mode 0600).
 *
 * Why: an etcd writer can delete leases, host records and issuance records, and then `host issue`
 * would see a held address as free. It cannot reach this file, and the file holds only signed
 * entries, so it can be trusted as far as its signatures go; what it adds is memory that etcd
 * cannot erase. Lines:
 *
 *   {"version":1,"cert":{...HostCert...}}
 *   {"version":1,"revocation":{...RevocationRecord...}}
 *
 * A line that does not parse or verify against the network's anchor is skipped and reported (with
 * file and line number); it never stops an issue. Entries are appended and synced to disk before
 * the certificate leaves the command. Keep the file with the key (back both up together).
 */

export const LEDGER_SUFFIX = '.issued';

export function ledgerFileFor(networkKeyFile: string): string {
  return `${networkKeyFile}${LEDGER_SUFFIX}`;
}

export interface Ledger {
  readonly certs: HostCert[];
  readonly revocations: RevocationRecord[];
  /** Lines skipped, each as "file:line: reason". */
  readonly skipped: string[];
}

/** Reads the ledger (an absent file is an empty ledger); every entry is verified against `anchor`. */
export function readLedger(file: string, anchor: TrustAnchor): Ledger {
  let text: string;
  try {
    checkPrivateMode(file, 'ledger');
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { certs: [], revocations: [], skipped: [] };
    if (e instanceof CladnetError) throw e;
    throw new CladnetError('EKEY', `ledger: cannot read ${file}: ${(e as Error).message}`, { field: 'ledger' });
  }
  return parseLedger(text, file, anchor);
}

/** The pure part of `readLedger`. */
export function parseLedger(text: string, file: string, anchor: TrustAnchor): Ledger {
  const certs: HostCert[] = [];
  const revocations: RevocationRecord[] = [];
  const skipped: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const where = `${file}:${i + 1}`;
    let doc: unknown;
    try {
      doc = JSON.parse(line);
    } catch {
      skipped.push(`${where}: not JSON`);
      continue;
    }
    if (typeof doc !== 'object' || doc === null || (doc as { version?: unknown }).version !== 1) {
      skipped.push(`${where}: version: expected 1`);
      continue;
    }
    const d = doc as { cert?: unknown; revocation?: unknown };
    if (d.cert !== undefined) {
      const parsed = parseHostCert(d.cert as object);
      if (!parsed.ok) {
        skipped.push(`${where}: cert.${parsed.error}`);
        continue;
      }
      // Signature and network only: an expired certificate is still a true entry.
      const bad = anchor.verifyCert(parsed.value, Date.parse(parsed.value.issued), 'cert');
      if (bad !== null) {
        skipped.push(`${where}: ${bad}`);
        continue;
      }
      certs.push(parsed.value);
    } else if (d.revocation !== undefined) {
      const parsed = parseRevocationRecord(JSON.stringify(d.revocation));
      if (!parsed.ok) {
        skipped.push(`${where}: revocation.${parsed.error}`);
        continue;
      }
      const bad = anchor.verifyRevocation(parsed.value);
      if (bad !== null) {
        skipped.push(`${where}: revocation.${bad}`);
        continue;
      }
      revocations.push(parsed.value);
    } else {
      skipped.push(`${where}: neither cert nor revocation`);
    }
  }
  return { certs, revocations, skipped };
}

/** Appends one entry and syncs it to disk; creates the file with mode 0600. Throws EKEY. */
export function appendLedger(file: string, entry: { cert: HostCert } | { revocation: RevocationRecord }): void {
  const line =
    'cert' in entry
      ? `{"version":1,"cert":${serializeHostCert(entry.cert)}}\n`
      : `{"version":1,"revocation":${serializeRevocationRecord(entry.revocation)}}\n`;
  let fd: number | undefined;
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT, 0o600);
    if ((fs.fstatSync(fd).mode & 0o077) !== 0) {
      throw new CladnetError('EKEY', `ledger: ${file} is readable by group or others; run: chmod 600 ${file}`, { field: 'ledger' });
    }
    fs.writeSync(fd, line);
    fs.fsyncSync(fd);
  } catch (e) {
    if (e instanceof CladnetError) throw e;
    throw new CladnetError('EKEY', `ledger: cannot append to ${file}: ${(e as Error).message}`, { field: 'ledger' });
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
