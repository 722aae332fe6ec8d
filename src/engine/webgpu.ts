// WebGPU for tfjs in Node through Dawn (the `webgpu` package).
//
// tfjs-backend-webgpu registers itself at import time only if `navigator.gpu` exists, and its registration asks for
// an adapter with no featureLevel, copies a few limits and has a bug in its feature list. Instead we create the Dawn
// instance, adapter and device ourselves and register the backend around that device:
//   - hardware: Dawn's default backend for the platform (Vulkan on Linux, Metal, D3D12), core WebGPU;
//   - software (explicit `webgpu` only, or tests): Dawn's OpenGL ES backend on Mesa llvmpipe. It needs
//     EGL_PLATFORM=surfaceless (no display) and WebGPU *compatibility* mode (`featureLevel: 'compatibility'`); Dawn
//     rejects Debian 12's lavapipe Vulkan. ~2 GFLOP/s: for exercising the webgpu code path, not for speed.
// Reading a webgpu tensor synchronously (dataSync/arraySync) throws in Node ("OffscreenCanvas is not defined"): use
// `await t.data()`.
// A live Dawn device keeps the process from exiting: destroyWebGPU() removes the tfjs backend (frees its buffers) and
// destroys the device.

import * as tf from '@tensorflow/tfjs';
import * as fs from 'node:fs';

export interface GpuInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** A CPU rasteriser (llvmpipe, lavapipe, SwiftShader, WARP...) rather than a GPU. */
  software: boolean;
  /** Dawn instance flags used, e.g. ['backend=opengles']. */
  dawnFlags: string[];
  featureLevel: 'core' | 'compatibility';
  features: string[];
}

export interface WebGPUSetup {
  device: GPUDevice;
  adapter: GPUAdapter;
  info: GpuInfo;
}

type SoftwarePolicy = 'never' | 'allow' | 'only';

/** Software adapters, by what Dawn/Mesa/ANGLE put in the adapter info strings. */
const SOFTWARE_RE = /llvmpipe|lavapipe|softpipe|swiftshader|swrast|software|microsoft basic render|\bwarp\b/i;

let current: WebGPUSetup | undefined;

export function currentWebGPU(): WebGPUSetup | undefined {
  return current;
}

/**
 * Cheap pre-check before loading Dawn on Linux: without a DRM render node, an NVIDIA device node or WSL's /dev/dxg
 * there is no GPU for Vulkan to find (Dawn would only print "Couldn't load Vulkan" and return no adapter).
 * Returns a reason to skip, or undefined to go ahead. Other platforms always go ahead.
 */
export function noGpuReason(): string | undefined {
  if (process.platform !== 'linux') return undefined;
  const has = (p: string): boolean => fs.existsSync(p);
  let nodes: string[] = [];
  try {
    nodes = fs.readdirSync('/dev/dri').filter((n) => n.startsWith('renderD'));
  } catch {
    /* no /dev/dri */
  }
  if (nodes.length > 0 || has('/dev/nvidia0') || has('/dev/nvidiactl') || has('/dev/dxg')) return undefined;
  return 'no GPU device node (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg)';
}

function describe(adapter: GPUAdapter, dawnFlags: string[], featureLevel: 'core' | 'compatibility'): GpuInfo {
  const i = adapter.info;
  const info = {
    vendor: i.vendor ?? '',
    architecture: i.architecture ?? '',
    device: i.device ?? '',
    description: i.description ?? '',
  };
  const fallback = (i as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  return {
    ...info,
    software: fallback || SOFTWARE_RE.test(Object.values(info).join(' ')),
    dawnFlags,
    featureLevel,
    features: [...adapter.features].map(String).sort(),
  };
}

/**
 * Make `navigator.gpu` visible (tfjs's WebGPUBackend constructor checks it) and Dawn's enums (GPUBufferUsage, ...)
 * global. Node 21+ has a read-only `navigator`; add `gpu` to it rather than replacing it.
 */
function exposeGpu(gpu: GPU, globals: object): void {
  Object.assign(globalThis, globals);
  const g = globalThis as { navigator?: object };
  if (g.navigator) Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true, writable: true });
  else Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
}

async function requestDevice(adapter: GPUAdapter): Promise<GPUDevice> {
  // Like tfjs's own registration: timestamp queries when available (profiling), bgra8unorm-storage (tfjs pushes it
  // as an array there, a bug). Limits: ask for everything the adapter offers. tfjs's list (workgroup storage,
  // workgroups per dimension, storage binding/buffer size, workgroup size X, invocations) is not enough: its reduce
  // programs use workgroup_size(256) with Y/Z defaults and compatibility mode's defaults are lower still.
  const requiredFeatures: GPUFeatureName[] = [];
  for (const f of ['timestamp-query', 'bgra8unorm-storage'] as GPUFeatureName[]) {
    if (adapter.features.has(f)) requiredFeatures.push(f);
  }
  const all: Record<string, number> = {};
  for (const k in adapter.limits) {
    const v = (adapter.limits as unknown as Record<string, unknown>)[k];
    if (typeof v === 'number') all[k] = v;
  }
  try {
    return await adapter.requestDevice({ requiredFeatures, requiredLimits: all });
  } catch {
    // An implementation that rejects one of its own limits: fall back to the ones tfjs needs.
    const l = adapter.limits;
    const needed: Record<string, number> = {
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupSizeZ: l.maxComputeWorkgroupSizeZ,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    };
    return adapter.requestDevice({ requiredFeatures, requiredLimits: needed });
  }
}

/**
 * Find an adapter and create a device. `software`: 'never' (auto mode: a CPU adapter is rejected), 'allow' (hardware
 * first, then the OpenGL ES/llvmpipe path), 'only' (straight to the software path). Throws with the reasons when
 * nothing suitable is found. Does not touch tfjs.
 */
export async function createWebGPUDevice(software: SoftwarePolicy = 'allow'): Promise<WebGPUSetup> {
  const { create, globals } = (await import('webgpu')) as { create(flags: string[]): GPU; globals: object };
  const reasons: string[] = [];
  const attempts: Array<{ flags: string[]; featureLevel: 'core' | 'compatibility' }> = [];
  // On Linux without a GPU device node the hardware attempt can only fail (noisily: Dawn prints Vulkan load errors).
  const noGpu = noGpuReason();
  if (software !== 'only') {
    if (noGpu && software === 'allow') reasons.push(`default: ${noGpu}`);
    else attempts.push({ flags: [], featureLevel: 'core' });
  }
  if (software !== 'never') attempts.push({ flags: ['backend=opengles'], featureLevel: 'compatibility' });

  for (const { flags, featureLevel } of attempts) {
    // Mesa's EGL must not look for an X/Wayland display; must be in the environment before Dawn initialises EGL.
    if (flags.includes('backend=opengles')) process.env.EGL_PLATFORM ??= 'surfaceless';
    const label = flags.length ? flags.join(',') : 'default';
    let adapter: GPUAdapter | null = null;
    const gpu = create(flags);
    try {
      adapter = await gpu.requestAdapter({
        powerPreference: 'high-performance',
        ...(featureLevel === 'compatibility' ? { featureLevel: 'compatibility' } : {}),
      } as GPURequestAdapterOptions);
    } catch (e) {
      reasons.push(`${label}: requestAdapter threw: ${(e as Error).message}`);
      continue;
    }
    if (!adapter) {
      reasons.push(`${label}: no adapter`);
      continue;
    }
    const info = describe(adapter, flags, featureLevel);
    if (info.software && software === 'never') {
      reasons.push(`${label}: software adapter rejected (${info.device || info.description || info.vendor})`);
      continue;
    }
    let device: GPUDevice;
    try {
      device = await requestDevice(adapter);
    } catch (e) {
      reasons.push(`${label}: requestDevice failed: ${(e as Error).message}`);
      continue;
    }
    exposeGpu(gpu, globals);
    current = { device, adapter, info };
    return current;
  }
  throw new Error(reasons.join('; ') || 'no WebGPU attempt was allowed');
}

/**
 * Register tfjs's 'webgpu' backend around our device (replacing the registration tfjs made at import, if any) and
 * make it current. Imports tfjs-backend-webgpu only now: its import-time registration would otherwise race ours.
 */
export async function useWebGPUBackend(setup: WebGPUSetup): Promise<void> {
  const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
  if (tf.engine().registryFactory['webgpu']) tf.removeBackend('webgpu');
  // tfjs's AdapterInfo reads vendor/architecture; Dawn's GPUAdapterInfo exposes them as prototype getters, so pass
  // a plain object.
  const adapterInfo = { vendor: setup.info.vendor, architecture: setup.info.architecture };
  // Priority 0 (below cpu): chosen explicitly, never by tfjs's automatic pick.
  tf.registerBackend('webgpu', async () => new WebGPUBackend(setup.device, adapterInfo as GPUAdapterInfo), 0);
  if (!(await tf.setBackend('webgpu'))) throw new Error('tf.setBackend("webgpu") failed');
}

/** Remove the tfjs webgpu backend and destroy the Dawn device, so the process can exit. */
export function destroyWebGPU(): void {
  if (tf.engine().registryFactory['webgpu']) tf.removeBackend('webgpu');
  if (current) {
    current.device.destroy();
    current = undefined;
  }
}
