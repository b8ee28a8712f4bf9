import type { Etcd3, IKeyValue } from 'etcd3';
import { isTooLargeError, toEtcdError } from './etcd';

/**
 * Paginated, consistent reads of a key range. Every read of a whole prefix goes through here.
 *
 * Why: etcd answers a Range in one gRPC message, and the client refuses a message larger than its
 * receive limit (grpc-js: 4 MiB unless raised; createEtcd raises it to 16 MiB). One unpaginated
 * read of a network therefore fails once the network holds more than the limit, whether from
 * ~3,000 honest hosts or from one member writing ~1.5 MiB (etcd's request limit) into each of its
 * own keys, and a failed read leaves every agent on stale peers.
 *
 * 1. The first page asks for `pageKeys` keys (default 500) at the current revision R, taken from
 *    the response header.
 * 2. Each following page starts just after the last key read, with `revision` pinned to R: the
 *    pages form one snapshot, so a watch from R + 1 misses nothing and sees nothing twice.
 * 3. A page refused as too large (RESOURCE_EXHAUSTED) is asked again with half as many keys, down
 *    to one. A single key whose value alone is too large is listed keys-only (keys are small),
 *    reported in `unreadable`, and the read goes on after it. After each page that fits, the page
 *    size doubles again (up to `pageKeys`). This is the last line of defence, not the normal path:
 *    etcd3 resets the client's channels (watch and lease streams included) on that error, so page
 *    size and receive limit are chosen so it does not happen (docs/security.md, "Record sizes").
 * 4. If R is compacted away between pages, the read starts over at a new revision (at most
 *    `MAX_RESTARTS` times, then the compaction error is thrown as EETCD, transient).
 *
 * Any other failure is thrown as EETCD (transient when etcd was unreachable).
 */

export const PAGE_KEYS = 500;
export const MAX_RESTARTS = 3;

export interface PageRequest {
  readonly start: Buffer;
  readonly end: Buffer;
  readonly limit: number;
  /** Pinned snapshot revision; absent for the first page (the current revision). */
  readonly revision?: string;
  /** Keys only, no values (step 3). */
  readonly keysOnly?: boolean;
}

export interface PageResponse {
  readonly kvs: readonly IKeyValue[];
  readonly more: boolean;
  readonly revision: string;
}

/** One Range call; the seam unit tests replace with a model of etcd. */
export type PageFetcher = (req: PageRequest) => Promise<PageResponse>;

export interface RangeRead {
  /** Every readable key of the range at `revision`, in key order. */
  readonly kvs: IKeyValue[];
  /** The snapshot revision: watch from revision + 1. */
  readonly revision: string;
  /** Range calls that returned a page (keys-only ones included). */
  readonly pages: number;
  /** Keys skipped because their value alone exceeds the client's receive limit (keys-only: no value). */
  readonly unreadable: IKeyValue[];
  /** Pages refused as too large and asked again smaller. */
  readonly refusedPages: number;
  /** Times the read started over because its revision was compacted. */
  readonly restarts: number;
}

export interface RangeOptions {
  pageKeys?: number;
}

/** The first key after every key that starts with `prefix` (etcd's range_end for a prefix). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // all 0xff (or empty): to the end of the keyspace
}

/** The smallest key after `key`. */
function after(key: Buffer): Buffer {
  return Buffer.concat([key, Buffer.from([0])]);
}

function isCompactedError(err: unknown): boolean {
  return err instanceof Error && /required revision has been compacted/i.test(err.message);
}

/** Reads every key starting with `prefix`, page by page at one revision (steps 1-4 above). */
export async function readPrefix(fetch: PageFetcher, prefix: string | Buffer, opts: RangeOptions = {}): Promise<RangeRead> {
  const start = Buffer.from(prefix);
  return readRange(fetch, start, prefixEnd(start), opts);
}

export async function readRange(fetch: PageFetcher, start: Buffer, end: Buffer, opts: RangeOptions = {}): Promise<RangeRead> {
  const pageKeys = opts.pageKeys ?? PAGE_KEYS;
  if (!Number.isInteger(pageKeys) || pageKeys < 1) throw new RangeError(`pageKeys: ${pageKeys} must be a positive integer`);
  let restarts = 0;
  let pages = 0;
  let refusedPages = 0;
  for (;;) {
    const kvs: IKeyValue[] = [];
    const unreadable: IKeyValue[] = [];
    let revision: string | undefined;
    let from = start;
    let limit = pageKeys;
    try {
      for (;;) {
        let page: PageResponse;
        try {
          page = await fetch({ start: from, end, limit, revision });
        } catch (e) {
          if (!isTooLargeError(e)) throw e;
          refusedPages++;
          if (limit > 1) {
            limit = Math.max(1, Math.floor(limit / 2));
            continue;
          }
          // One value alone is too large: learn its key without the value and step over it.
          page = await fetch({ start: from, end, limit: 1, revision, keysOnly: true });
          pages++;
          revision ??= page.revision;
          const kv = page.kvs[0];
          if (!kv) break;
          unreadable.push(kv);
          limit = Math.min(pageKeys, 2);
          if (!page.more) break;
          from = after(kv.key);
          continue;
        }
        pages++;
        revision ??= page.revision;
        kvs.push(...page.kvs);
        limit = Math.min(pageKeys, limit * 2);
        const last = page.kvs[page.kvs.length - 1];
        if (!page.more || !last) break;
        from = after(last.key);
      }
    } catch (e) {
      if (isCompactedError(e) && revision !== undefined && restarts < MAX_RESTARTS) {
        restarts++;
        continue;
      }
      throw toEtcdError(e, `read ${start.toString('utf8')}`);
    }
    return { kvs, revision: revision ?? '0', pages, unreadable, refusedPages, restarts };
  }
}

/** The PageFetcher over a real client (its KV service directly: the builders hide keys_only's header). */
export function etcdPages(client: Etcd3): PageFetcher {
  return async (req) => {
    const res = await client.kv.range({
      key: req.start,
      range_end: req.end,
      limit: req.limit,
      ...(req.revision === undefined ? {} : { revision: req.revision }),
      ...(req.keysOnly ? { keys_only: true } : {}),
    });
    return { kvs: res.kvs, more: res.more, revision: res.header.revision };
  };
}
