export { loadPolicyFile, parsePolicy } from './schema.js';
export type { PolicyLoadResult } from './schema.js';
export { compilePolicy } from './compile.js';
export type { CompiledPolicy } from './compile.js';
export { combineDecisions, decide, decideByName } from './evaluate.js';
export type { Classify, DecideOptions, DestinationHost } from './evaluate.js';
export type * from './types.js';
