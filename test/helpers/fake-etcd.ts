import { EventEmitter } from 'node:events';
import type { Etcd3, IKeyValue } from 'etcd3';

/**
 * An in-memory stand-in for the parts of etcd3 the registry's watch uses (watch.ts, range.ts):
 * `kv.range` (paged, at the current revision) and `watch().prefix().startRevision().watcher()`.
 * `put`/`del` change the store and send the event to every watcher of a matching prefix (each
 * call is one revision and one watch message). Counts the ranges and keys read.
 */
export class FakeEtcd {
  private readonly store = new Map<string, IKeyValue>();
  private revision = 1;
  private readonly watchers: { prefix: string; w: EventEmitter }[] = [];
  ranges = 0;
  rangeKeys = 0;

  put(key: string, value: string): void {
    this.revision++;
    const old = this.store.get(key);
    const kv = {
      key: Buffer.from(key),
      value: Buffer.from(value),
      mod_revision: String(this.revision),
      create_revision: old?.create_revision ?? String(this.revision),
      version: String(Number(old?.version ?? 0) + 1),
      lease: '0',
    } as IKeyValue;
    this.store.set(key, kv);
    this.send('Put', kv);
  }

  del(key: string): void {
    const old = this.store.get(key);
    if (!old) return;
    this.revision++;
    this.store.delete(key);
    this.send('Delete', { ...old, value: Buffer.alloc(0), mod_revision: String(this.revision) } as IKeyValue);
  }

  private send(type: 'Put' | 'Delete', kv: IKeyValue): void {
    const k = kv.key.toString();
    for (const { prefix, w } of this.watchers) {
      if (k.startsWith(prefix)) w.emit('data', { header: { revision: String(this.revision) }, events: [{ type, kv }] });
    }
  }

  /** The client the registry is given (only what it calls is there). */
  client(): Etcd3 {
    const kv = {
      range: async (req: { key: Buffer; range_end: Buffer; limit?: number | string }) => {
        this.ranges++;
        const from = req.key.toString();
        const to = req.range_end.toString();
        const keys = [...this.store.keys()].filter((k) => k >= from && k < to).sort();
        const limit = Number(req.limit ?? 0) || keys.length;
        const kvs = keys.slice(0, limit).map((k) => this.store.get(k)!);
        this.rangeKeys += kvs.length;
        return { kvs, more: keys.length > limit, count: String(keys.length), header: { revision: String(this.revision) } };
      },
    };
    const watch = () => {
      let prefix = '';
      const b = {
        prefix: (p: string) => ((prefix = p), b),
        startRevision: () => b,
        watcher: () => {
          const w = new EventEmitter() as EventEmitter & { cancel: () => Promise<void> };
          const entry = { prefix, w };
          this.watchers.push(entry);
          w.cancel = async () => {
            const i = this.watchers.indexOf(entry);
            if (i >= 0) this.watchers.splice(i, 1);
          };
          setImmediate(() => w.emit('connected'));
          return w;
        },
      };
      return b;
    };
    return { kv, watch } as unknown as Etcd3;
  }
}
