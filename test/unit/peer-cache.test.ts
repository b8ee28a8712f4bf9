import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { JOURNAL_MIN_BYTES, PeerCache, type CacheContent } from '../../src/control/peer-cache';
import type { HostRecord, NetworkSpec } from '../../src/control/records';
import { createRootLogger, type Logger } from '../../src/log';
import { parseOverlayCidr } from '../../src/util/ipv4';
import { rng as seeded } from '../helpers/rng';

/**
 * The peer cache's journal (issue 11, work per change proportional to the change): a change of
 * one member appends about one record's worth of bytes; the snapshot of N members is rewritten
 * only after the journal has grown past it (amortised O(1) per change); a reader gets the
 * snapshot with its own generation's journal lines applied, skips garbled lines with a warning,
 * and ignores lines left from an older snapshot. Reading only: records here need not verify
 * (registry tests cover the checks applied to what is read).
 */

const spec = { name: 'demo', cidr: '100.64.0.0/16' } as unknown as NetworkSpec;
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function record(name: string, epoch: number): HostRecord {
  // A record-sized body (~1 KB, as a signed record with its certificate is).
  return { name, epoch, overlayIp: '100.64.0.1', publicKey: 'k'.repeat(44), endpoints: ['198.18.0.1:51820'], pad: 'x'.repeat(800) } as unknown as HostRecord;
}

function setup(warn?: (o: unknown, msg?: string) => void): { cache: PeerCache; file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'clad-cache-'));
  dirs.push(dir);
  const file = path.join(dir, 'peers.json');
  const silent = createRootLogger('silent');
  const log = (warn ? { ...silent, warn } : silent) as Logger;
  return { cache: new PeerCache({ file, network: spec, cidr: parseOverlayCidr(spec.cidr), self: 'me', log, now: Date.now, minIntervalMs: 0 }), file };
}

const content = (members: Map<string, HostRecord>) => (): CacheContent => ({ peers: [...members.values()], revocations: [], certs: [], tokens: null });

describe('peer cache journal', () => {
  it('a member change appends about one record; the snapshot is rewritten only once the journal outgrows it; a reader sees the newest state', async () => {
    const N = 1000;
    const next = seeded(11);
    const int = (n: number) => Math.floor(next() * n);
    const members = new Map<string, HostRecord>();
    for (let i = 0; i < N; i++) members.set(`h${i}`, record(`h${i}`, 1));
    const { cache, file } = setup();
    cache.save(content(members));
    await cache.flush();
    expect(cache.snapshots).toBe(1);
    const snapshotBytes = cache.bytesWritten;
    const recordBytes = JSON.stringify(record('h0', 1)).length;
    expect(snapshotBytes).toBeGreaterThan(N * recordBytes);

    const CHANGES = 3 * N;
    let epoch = 1;
    for (let k = 0; k < CHANGES; k++) {
      const name = `h${int(N)}`;
      const before = cache.bytesWritten;
      if (int(20) === 0) {
        members.delete(name);
        cache.save(content(members), { put: [], removed: [name] });
      } else {
        const r = record(name, ++epoch);
        members.set(name, r);
        cache.save(content(members), { put: [r], removed: [] });
      }
      await cache.flush();
      const wrote = cache.bytesWritten - before;
      // Each write is one journal line, or (now and then) a snapshot of the whole set.
      if (wrote > 2 * recordBytes) expect(wrote).toBeGreaterThan(0.9 * snapshotBytes);
    }
    // Amortised: 3,000 changes cost about 3,000 records plus a snapshot per N records of journal.
    const perChange = (cache.bytesWritten - snapshotBytes) / CHANGES;
    expect(perChange).toBeLessThan(3 * recordBytes);
    expect(cache.snapshots).toBeGreaterThanOrEqual(2);
    expect(cache.snapshots).toBeLessThanOrEqual(1 + Math.ceil(CHANGES / (N * 0.5)));
    expect(fs.statSync(`${file}.journal`).size).toBeLessThanOrEqual(Math.max(snapshotBytes, JOURNAL_MIN_BYTES) + 2 * recordBytes);

    const doc = await readerFor(file).read();
    expect(doc).not.toBeNull();
    const got = new Map((doc!.peers as HostRecord[]).map((p) => [p.name, p.epoch]));
    expect(got).toEqual(new Map([...members].map(([n, r]) => [n, r.epoch])));
  });

  it('anything but member changes writes a snapshot; lines of an older snapshot are ignored; a garbled line is skipped with a warning', async () => {
    const warnings: string[] = [];
    const { cache, file } = setup((_o, msg) => void warnings.push(String(msg)));
    const members = new Map([['a', record('a', 1)], ['b', record('b', 1)]]);
    cache.save(content(members));
    await cache.flush();
    members.set('a', record('a', 2));
    cache.save(content(members), { put: [members.get('a')!], removed: [] });
    await cache.flush();
    expect(cache.snapshots).toBe(1);
    // A line from another generation (as a crash between snapshot and journal reset leaves) and
    // a garbled one.
    fs.appendFileSync(`${file}.journal`, `${JSON.stringify({ g: 'old', put: record('a', 99) })}\n{"g": nope\n`);
    members.delete('b');
    cache.save(content(members), { put: [], removed: ['b'] });
    await cache.flush();
    const doc = await cache.read();
    expect((doc!.peers as HostRecord[]).map((p) => [p.name, p.epoch])).toEqual([['a', 2]]);
    expect(warnings).toContain('skipped unreadable peer cache journal lines');

    // No change list (revocations, certificates...): a snapshot, and the journal starts over.
    cache.save(content(members));
    await cache.flush();
    expect(cache.snapshots).toBe(2);
    expect(fs.readFileSync(`${file}.journal`, 'utf8')).toBe('');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(((await cache.read())!.peers as HostRecord[]).map((p) => p.name)).toEqual(['a']);
  });
});

/** A fresh PeerCache on `file` (what the next start reads). */
function readerFor(file: string): PeerCache {
  return new PeerCache({ file, network: spec, cidr: parseOverlayCidr(spec.cidr), self: 'me', log: createRootLogger('silent'), now: Date.now });
}
