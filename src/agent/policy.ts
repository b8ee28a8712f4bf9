/**
 * The agent's side of the network policy (security groups): the newest verified policy from
 * etcd (src/control/policy.ts PolicyHolder: forged, garbled, older or deleted values change
 * nothing), compiled for this host over the trusted peers' certificates and handed to the data
 * plane (src/dataplane/policy.ts) by one message, again whenever the policy or the peer set
 * changes. The last applied policy is kept in the state dir and read back at start (verified
 * again), so a restart neither opens the host while etcd is unreachable nor takes an older one.
 */
import * as fs from 'node:fs';
import type { Logger } from '../log';
import type { TrustAnchor } from '../control/cert';
import { compilePolicy, memberOf, PolicyHolder, serializePolicy, type PolicyMember } from '../control/policy';
import type { HostCert } from '../control/records';
import { C_DENIED, C_REPLIES, C_RULES, counterSlots, type CompiledPolicy } from '../dataplane/policy';
import type { StatusPolicy } from '../status/types';
import { writeFileAtomicSync } from '../util/atomic-file';

export interface AgentPolicyOptions {
  network: string;
  trust: TrustAnchor;
  /** Our own certificate: our name and groups decide which rules are ours. */
  selfCert: HostCert;
  /** The trusted peers' certificates now. */
  peerCerts: () => Iterable<HostCert>;
  /** Hands the compiled policy (null: none) and its counters to the data plane. */
  apply: (policy: CompiledPolicy | null, counters: SharedArrayBuffer | null) => void;
  /** Where the last applied policy is kept (null: nowhere). */
  file: string | null;
  log: Logger;
}

export class AgentPolicy {
  private readonly holder: PolicyHolder;
  private readonly log: Logger;
  private counters: Float64Array | null = null;
  private compiled: CompiledPolicy | null = null;
  private scheduled = false;
  /** When the policy in use was applied (ISO time). */
  private appliedAt: string | null = null;

  constructor(private readonly o: AgentPolicyOptions) {
    this.log = o.log.child({ component: 'policy' });
    this.holder = new PolicyHolder(o.network, o.trust, this.log);
  }

  /** The policy kept in the state dir, verified again; applied at once. */
  load(): void {
    if (this.o.file === null) return;
    let text: string;
    try {
      text = fs.readFileSync(this.o.file, 'utf8');
    } catch {
      return; // none kept
    }
    if (this.holder.apply(text, 'file')) this.recompile();
  }

  /** A put or delete of the /policy key (registry.ts onPolicy). */
  onValue(value: Buffer, modRevision: string, deleted: boolean): void {
    if (!this.holder.apply(value, modRevision, deleted)) return;
    const p = this.holder.current!;
    if (this.o.file !== null) {
      try {
        writeFileAtomicSync(this.o.file, `${serializePolicy(p)}\n`);
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, 'cannot keep the policy in the state dir');
      }
    }
    this.recompile();
  }

  /** The peer set changed: sources by host and group resolve to other addresses (coalesced per tick). */
  peersChanged(): void {
    if (this.holder.current === null || this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.recompile(false);
    });
  }

  private recompile(fresh = true): void {
    const p = this.holder.current;
    if (p === null) return;
    const peers: PolicyMember[] = [];
    for (const c of this.o.peerCerts()) peers.push(memberOf(c));
    this.compiled = compilePolicy(p, memberOf(this.o.selfCert), peers);
    // New counters with a new policy; a recompile for new peers keeps counting into the same ones.
    if (fresh || this.counters === null) {
      this.counters = new Float64Array(new SharedArrayBuffer(8 * counterSlots(p.rules.length)));
      this.appliedAt = new Date().toISOString();
    }
    this.o.apply(this.compiled, this.counters.buffer as SharedArrayBuffer);
  }

  status(): StatusPolicy {
    const p = this.holder.current;
    const c = this.counters;
    const here = new Set(this.compiled?.rules.map((r) => r.index));
    return {
      serial: p?.serial ?? null,
      issued: p?.issued ?? null,
      appliedAt: this.appliedAt,
      open: p === null || (this.compiled?.open ?? false),
      invalid: this.holder.invalid,
      stale: this.holder.stale,
      denied: c ? c[C_DENIED]! : 0,
      replies: c ? c[C_REPLIES]! : 0,
      rules: (p?.rules ?? []).map((r, i) => ({
        index: i,
        id: r.id ?? null,
        from: r.from,
        to: r.to,
        proto: r.proto,
        ports: r.ports ?? null,
        here: here.has(i),
        packets: c ? c[C_RULES + i]! : 0,
      })),
    };
  }
}
