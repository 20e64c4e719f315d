/** What every view gets: who the operator is, and a way to move between views. */
import type { Role } from './api.js';

export interface Context {
  readonly role: Role;
  /** Whether the API has no tokens configured and the caller is the tokenless viewer. */
  readonly tokenless: boolean;
  go(view: string): void;
}

export interface View {
  readonly title: string;
  /** Fills `root`; returns what to undo when the operator leaves the view. */
  mount(root: HTMLElement, ctx: Context): (() => void) | void;
}

export const isDeveloper = (ctx: Context): boolean => ctx.role === 'developer';
