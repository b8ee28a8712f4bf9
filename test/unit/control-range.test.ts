import type { IKeyValue } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { MAX_RECORD_BYTES } from '../../src/control/records';
import { PageFetcher, PageRequest, prefixEnd, readPrefix } from '../../src/control/range';
import { CladnetError } from '../../src/errors';
import { rng } from '../helpers/rng';

/**
 * readPrefix against a model of etcd's Range semantics: a multi-version store, `limit` and `more`,
 * reads at a pinned revision (the response header carries the *current* revision, as etcd's does),
 * compaction, and a receive limit that refuses a too-large response the way grpc-js does.
 */

interface Version {
  key: Buffer;
  value: Buffer | null; // null: deleted
  rev: number;
}

class ModelEtcd {
  rev = 1;
  compacted = 0;
  private readonly log: Version[] = [];
  readonly requests: PageRequest[] = [];
  readonly refused: boolean[] = []; // per request: refused as too large
  /** Called after each answered page (writes "between pages" go here). */
  afterPage: (n: number) => void = () => undefined;

  constructor(private readonly maxMessageBytes = Infinity) {}

  put(key: string, value: string | Buffer): void {
    this.log.push({ key: Buffer.from(key), value: Buffer.from(value), rev: ++this.rev });
  }

  del(key: string): void {
    this.log.push({ key: Buffer.from(key), value: null, rev: ++this.rev });
  }

  /** Live keys at `rev`, sorted, with their values and mod revisions. */
  stateAt(rev: number): IKeyValue[] {
    const latest = new Map<string, Version>();
    for (const v of this.log) if (v.rev <= rev) latest.set(v.key.toString('latin1'), v);
    return [...latest.values()]
      .filter((v) => v.value !== null)
      .sort((a, b) => Buffer.compare(a.key, b.key))
      .map((v) => ({ key: v.key, value: v.value!, mod_revision: String(v.rev) }) as unknown as IKeyValue);
  }

  readonly fetch: PageFetcher = async (req) => {
    this.requests.push(req);
    this.refused.push(false);
    const at = req.revision === undefined ? this.rev : Number(req.revision);
    if (at < this.compacted) throw new Error('etcdserver: mvcc: required revision has been compacted');
    const inRange = this.stateAt(at).filter((kv) => Buffer.compare(kv.key, req.start) >= 0 && Buffer.compare(kv.key, req.end) < 0);
    const page = inRange.slice(0, req.limit).map((kv) => (req.keysOnly ? ({ key: kv.key, mod_revision: kv.mod_revision } as IKeyValue) : kv));
    const bytes = page.reduce((n, kv) => n + kv.key.length + (kv.value?.length ?? 0) + 16, 0);
    if (bytes > this.maxMessageBytes) {
      const e = new Error(`Received message larger than max (${bytes} vs ${this.maxMessageBytes})`) as Error & { code: number };
      e.code = 8;
      this.refused[this.refused.length - 1] = true;
      throw e;
    }
    const res = { kvs: page, more: inRange.length > req.limit, revision: String(this.rev) };
    this.afterPage(this.requests.length);
    return res;
  };
}

const P = '/cladnet/v1/networks/demo/';
const name = (i: number) => `${P}hosts/h${String(i).padStart(5, '0')}`;
const keysOf = (kvs: IKeyValue[]) => kvs.map((kv) => kv.key.toString());

function fill(m: ModelEtcd, n: number, valueBytes: number): void {
  // Neighbours outside the prefix on both sides, including the key just past it.
  m.put('/cladnet/v1/networks/demn/hosts/x', 'before');
  m.put('/cladnet/v1/networks/demo', 'the spec key is not under the prefix');
  m.put('/cladnet/v1/networks/demo0', 'prefixEnd(P) itself');
  for (let i = 0; i < n; i++) m.put(name(i), 'v'.repeat(valueBytes));
}

describe('readPrefix (paginated consistent range reads)', () => {
  it('reads 1,234 keys in 13 pages of 100, exactly the prefix, in key order', async () => {
    const m = new ModelEtcd();
    fill(m, 1234, 50);
    const res = await readPrefix(m.fetch, P, { pageKeys: 100 });
    expect(res.kvs).toHaveLength(1234);
    expect(keysOf(res.kvs)).toEqual(Array.from({ length: 1234 }, (_, i) => name(i)));
    expect(res.pages).toBe(13);
    expect(m.requests).toHaveLength(13);
    expect(m.requests.every((r) => r.limit === 100)).toBe(true);
    expect(res.revision).toBe(String(m.rev));
    expect(res.unreadable).toEqual([]);
  });

  it('pins every page after the first to the first page revision: writes between pages are not seen', async () => {
    const m = new ModelEtcd();
    fill(m, 300, 20);
    const first = m.rev;
    m.afterPage = (n) => {
      // After each page: add a key at the front, delete one at the back, rewrite one in the middle.
      m.put(`${P}hosts/a${n}`, 'new');
      m.del(name(299 - n));
      m.put(name(150), `rewritten ${n}`);
    };
    const res = await readPrefix(m.fetch, P, { pageKeys: 64 });
    expect(res.revision).toBe(String(first));
    expect(m.requests.slice(1).every((r) => r.revision === String(first))).toBe(true);
    expect(res.kvs.map((kv) => [kv.key.toString(), kv.value.toString()])).toEqual(
      m.stateAt(first).filter((kv) => kv.key.toString().startsWith(P)).map((kv) => [kv.key.toString(), kv.value.toString()]),
    );
    expect(res.kvs).toHaveLength(300);
  });

  it('halves a page refused as too large and steps over a value too large to fetch at all', async () => {
    const m = new ModelEtcd(20_000);
    fill(m, 400, 100);
    m.put(name(10), 'S'.repeat(12_000)); // stuffed, but fits a page on its own
    m.put(name(11), 'S'.repeat(12_000)); // ... two of them do not
    m.put(name(200), 'X'.repeat(30_000)); // alone over the limit
    const bigRev = String(m.rev);
    const res = await readPrefix(m.fetch, P, { pageKeys: 500 });
    expect(res.refusedPages).toBeGreaterThan(0);
    expect(res.unreadable.map((kv) => [kv.key.toString(), kv.mod_revision])).toEqual([[name(200), bigRev]]);
    expect(keysOf(res.kvs)).toEqual(Array.from({ length: 400 }, (_, i) => name(i)).filter((k) => k !== name(200)));
    expect(res.kvs.find((kv) => kv.key.toString() === name(11))!.value.length).toBe(12_000);
    // After a refusal the same start is asked again with fewer keys (or keys-only at one key);
    // after a page that fits, the page size grows back (by doubling) to 500.
    for (let i = 0; i + 1 < m.requests.length; i++) {
      const [a, b] = [m.requests[i]!, m.requests[i + 1]!];
      if (m.refused[i]) {
        expect(b.start).toEqual(a.start);
        expect(b.limit < a.limit || (a.limit === 1 && b.keysOnly)).toBe(true);
      } else if (!a.keysOnly) {
        expect(b.limit).toBe(Math.min(500, a.limit * 2));
      }
    }
    expect(res.refusedPages).toBe(m.refused.filter(Boolean).length);
  });

  it('starts over at a new revision when the pinned one is compacted between pages', async () => {
    const m = new ModelEtcd();
    fill(m, 250, 10);
    m.afterPage = (n) => {
      if (n !== 1) return;
      m.put(name(249), 'written after the first page');
      m.compacted = m.rev;
    };
    const res = await readPrefix(m.fetch, P, { pageKeys: 100 });
    expect(res.restarts).toBe(1);
    expect(res.revision).toBe(String(m.rev));
    expect(res.kvs).toHaveLength(250);
    expect(res.kvs[249]!.value.toString()).toBe('written after the first page');
  });

  it('gives up with a transient-looking EETCD after 3 restarts under constant compaction', async () => {
    const m = new ModelEtcd();
    fill(m, 250, 10);
    m.afterPage = () => {
      m.put(name(0), 'again');
      m.compacted = m.rev;
    };
    const err = await readPrefix(m.fetch, P, { pageKeys: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CladnetError);
    expect((err as CladnetError).code).toBe('EETCD');
    expect((err as CladnetError).message).toMatch(/compacted/);
    expect(m.requests.filter((r) => r.revision === undefined)).toHaveLength(4);
  });

  it('maps any other failure to EETCD', async () => {
    const failing: PageFetcher = async () => {
      throw new Error('etcdserver: permission denied');
    };
    const err = await readPrefix(failing, P).catch((e: unknown) => e);
    expect((err as CladnetError).code).toBe('EETCD');
  });

  it('reads an empty prefix in one page at the current revision', async () => {
    const m = new ModelEtcd();
    fill(m, 0, 0);
    const res = await readPrefix(m.fetch, P);
    expect(res).toMatchObject({ kvs: [], pages: 1, revision: String(m.rev) });
  });

  it('random stores, page sizes and limits: the result is always the snapshot minus only values over the limit', async () => {
    const r = rng(10_5);
    for (let round = 0; round < 40; round++) {
      const limit = 2_000 + Math.floor(r() * 20_000);
      const m = new ModelEtcd(limit);
      const n = Math.floor(r() * 300);
      for (let i = 0; i < n; i++) m.put(name(Math.floor(r() * 400)), 'z'.repeat(r() < 0.05 ? Math.floor(r() * MAX_RECORD_BYTES) : Math.floor(r() * 200)));
      const snap = m.stateAt(m.rev).filter((kv) => kv.key.toString().startsWith(P));
      const tooBig = snap.filter((kv) => kv.key.length + kv.value.length + 16 > limit).map((kv) => kv.key.toString());
      const res = await readPrefix(m.fetch, P, { pageKeys: 1 + Math.floor(r() * 100) });
      expect(keysOf(res.kvs)).toEqual(snap.map((kv) => kv.key.toString()).filter((k) => !tooBig.includes(k)));
      expect(res.unreadable.map((kv) => kv.key.toString())).toEqual(tooBig);
    }
  });
});

describe('prefixEnd', () => {
  it('increments the last byte below 0xff and cuts what follows', () => {
    expect(prefixEnd(Buffer.from('a/')).toString()).toBe('a0');
    expect(prefixEnd(Buffer.from([0x61, 0xff, 0xff]))).toEqual(Buffer.from([0x62]));
    expect(prefixEnd(Buffer.from([0xff]))).toEqual(Buffer.from([0]));
  });
});
