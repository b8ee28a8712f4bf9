import type { Etcd3 } from 'etcd3';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import type { Prefix } from '../util/ipv4';
import { etcdCall } from './etcd';
import { hostKey } from './keys';
import { checkOverlayIpInNetwork, checkRecordSize, HostRecord, NetworkSpec, parseHostRecord, serializeHostRecord } from './records';

/**
 * Publishing our own host record (registry job 1).
 *
 * `publish(record)` writes /hosts/<self> with a monotonic epoch, never over a newer writer's:
 * the write is a transaction on the key's mod revision, so nobody's write lands between our read
 * and ours. Once this publisher has written, the stored record is expected to be its own; if
 * another writer for the same host name (a newer process after a restart, a cloned VM) has
 * written since, this one is the older writer and does not overwrite: it returns `superseded`.
 * The first publish always takes over. Calls are serialised (the last call wins).
 *
 * `abort()` gives up on the publish in flight: when our own address goes away, a call already
 * sent on a connection from that address waits out its whole deadline (5 s) before anyone
 * retries, and the peers would learn our new endpoint that much later. The abandoned call may
 * still land; the mod-revision guard makes it harmless (it fails once a newer write is in, and a
 * value we sent is recognised as ours).
 */

export type PublishResult =
  | { written: true; record: HostRecord }
  /** Another writer for the same host name published after us: we are the older writer. */
  | { written: false; reason: 'superseded'; current: HostRecord };

export interface PublisherOptions {
  client: Etcd3;
  network: NetworkSpec;
  cidr: Prefix;
  self: string;
  log: Logger;
  now: () => number;
  /** True once the owner is closed: a publish then fails. */
  closed: () => boolean;
}

const PUBLISH_ATTEMPTS = 8;

export class Publisher {
  private chain: Promise<unknown> = Promise.resolve();
  private maxEpoch = 0; // highest epoch this publisher has tried to write
  private triedWrites: string[] = []; // the last few values sent, to recognise our own write
  private lastWriteRevision: string | null = null; // mod revision of our last successful write
  private abortInFlight: ((e: Error) => void) | null = null;

  constructor(private readonly opts: PublisherOptions) {}

  /**
   * Writes our host record; sets `epoch` (max(stored + 1, ours + 1, now), so it only grows,
   * whatever the wall clock does) and `updated`.
   */
  publish(record: HostRecord): Promise<PublishResult> {
    const run = this.chain.then(() => this.publishOnce(record));
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Makes the publish in flight (if any) reject at once with EABORTED, so the next one starts
   * without waiting for an etcd call that may never answer. True if there was one.
   */
  abort(): boolean {
    const abort = this.abortInFlight;
    if (!abort) return false;
    abort(new CladnetError('EABORTED', 'publish abandoned: our addresses changed while it was in flight', { transient: true }));
    return true;
  }

  /** `p`, unless abort() comes first. */
  private abortable<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.abortInFlight = reject;
      p.then(resolve, reject).finally(() => {
        if (this.abortInFlight === reject) this.abortInFlight = null;
      });
    });
  }

  /** Resolves when no publish is in flight any more. */
  settled(): Promise<void> {
    return this.chain.then(
      () => undefined,
      () => undefined,
    );
  }

  private async publishOnce(record: HostRecord): Promise<PublishResult> {
    const { client, network: spec, self, log, now } = this.opts;
    if (this.opts.closed()) throw new Error('registry is closed');
    if (record.name !== self) {
      throw new CladnetError('ERECORD', `name: "${record.name}" is not this host ("${self}")`, { field: 'name' });
    }
    const key = hostKey(spec.name, self);
    for (let attempt = 0; attempt < PUBLISH_ATTEMPTS; attempt++) {
      const res = await this.abortable(etcdCall(`read ${key}`, () => client.get(key).exec()));
      const kv = res.kvs[0];
      const stored = kv ? parseHostRecord(kv.value, { network: spec.name, name: self }) : null;
      const storedEpoch = stored?.ok ? stored.value.epoch : 0;
      // Someone else's valid record, written after our last write (a record byte-equal to one we
      // sent is ours: that write landed even if we never saw the answer).
      if (
        kv &&
        stored?.ok &&
        this.lastWriteRevision !== null &&
        kv.mod_revision !== this.lastWriteRevision &&
        !this.triedWrites.includes(kv.value.toString('utf8'))
      ) {
        log.warn({ host: self, storedEpoch, ourEpoch: this.maxEpoch }, 'host record was published by a newer writer; not overwriting it');
        return { written: false, reason: 'superseded', current: stored.value };
      }
      const t = Math.floor(now());
      const epoch = Math.max(storedEpoch + 1, this.maxEpoch + 1, t);
      const candidate: HostRecord = { ...record, epoch, updated: new Date(t).toISOString() };
      const checked = parseHostRecord(serializeHostRecord(candidate), { network: spec.name, name: self });
      if (!checked.ok) throw new CladnetError('ERECORD', `host record: ${checked.error}`);
      const inNet = checkOverlayIpInNetwork(checked.value, this.opts.cidr, spec.cidr);
      if (inNet !== null) throw new CladnetError('ERECORD', `host record: ${inNet}`, { field: 'overlayIp' });

      const value = serializeHostRecord(checked.value);
      checkRecordSize('host', value);
      this.maxEpoch = epoch;
      this.triedWrites = [...this.triedWrites.slice(-3), value];
      const put = client.put(key).value(value);
      const txn = kv ? client.if(key, 'Mod', '==', kv.mod_revision) : client.if(key, 'Create', '==', 0);
      const done = await this.abortable(etcdCall(`publish ${key}`, () => txn.then(put).commit()));
      if (done.succeeded) {
        this.lastWriteRevision = done.header.revision;
        log.debug({ host: self, epoch }, 'published host record');
        return { written: true, record: checked.value };
      }
      log.debug({ host: self, attempt }, 'host record changed while publishing; reading it again');
    }
    throw new CladnetError('EETCD', `publish ${key}: the record kept changing underneath (${PUBLISH_ATTEMPTS} attempts)`, {
      transient: true,
    });
  }
}
