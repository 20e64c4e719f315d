/**
 * Request bodies for the admin API: bounded (a declared or streamed size over the limit is a
 * 413 before more is read), of the declared media type (415), and well-formed (400).
 */
import type { IncomingMessage } from 'node:http';
import { badRequest, HttpError } from './http-error.js';

export const MAX_BODY = 256 * 1024;

/** The raw body, at most `MAX_BODY` bytes, when its content-type matches `type`. */
export async function readBody(req: IncomingMessage, type: RegExp, expected: string): Promise<Buffer> {
  if (!type.test(req.headers['content-type'] ?? '')) throw new HttpError(415, 'unsupported_media_type', `send ${expected}`);
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY) throw new HttpError(413, 'payload_too_large', `bodies are limited to ${MAX_BODY} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > MAX_BODY) throw new HttpError(413, 'payload_too_large', `bodies are limited to ${MAX_BODY} bytes`);
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    if (err instanceof HttpError) throw err;
    throw badRequest('the request body could not be read');
  }
  return Buffer.concat(chunks);
}

/** A JSON object body (content-type: application/json). */
export async function readJsonObject(req: IncomingMessage): Promise<Record<string, unknown>> {
  const raw = await readBody(req, /^application\/json\b/i, 'a JSON body (content-type: application/json)');
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw badRequest(`invalid JSON: ${(err as Error).message.slice(0, 200)}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw badRequest('the body must be a JSON object');
  return parsed as Record<string, unknown>;
}

/** A UTF-8 text body of the given media type (invalid UTF-8 is a 400, not a replacement character). */
export async function readText(req: IncomingMessage, type: RegExp, expected: string): Promise<string> {
  const raw = await readBody(req, type, expected);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw badRequest('the body is not valid UTF-8');
  }
}
