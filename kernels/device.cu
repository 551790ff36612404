/* device.cu: hisa_k_init, the one place the kernels look at the device.
 *
 * Why per runtime: kernel attributes (dynamic shared-memory limits) are per device, and the
 * figures the launchers size grids by (multiprocessor count, occupancy) belong to the device a
 * runtime was opened on; a process-wide "done" flag would leave a second GPU unprepared. So every
 * open runs this with its device current and keeps the result in its own state; no launch
 * queries the device again. Invariant: nothing here is a stream operation (graph capture safe). */
#include "common.cuh"

extern "C" int hisa_k_init(hisa_k_device *dev) {
    if (!dev || dev->ordinal < 0) return HISA_K_EINVAL;
    int sms = 0, major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev->ordinal) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev->ordinal) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev->ordinal) != cudaSuccess)
        return HISA_K_EDEVICE;
    dev->sm_count = sms;
    dev->cc_major = major;
    dev->cc_minor = minor;
    /* The kernels are built as sm_90a code plus sm_80 code and compute_80 PTX (Makefile,
     * GENCODE). Hopper runs the sm_90a image; older and newer GPUs run the portable one, whose
     * Hopper-only kernels are traps: dev->hopper says which image is loaded, found from a Hopper
     * kernel's attributes rather than the compute capability (a forced PTX JIT loads the
     * portable image on Hopper too, which is how the tests exercise it there). */
    if (major < 8 || sms < 1) return HISA_K_EINVAL;
    if (dev->path < HISA_K_PATH_AUTO || dev->path > HISA_K_PATH_HOPPER) return HISA_K_EINVAL;
    dev->hopper = major == 9 && hisa__k_hopper_image();
    if (dev->path == HISA_K_PATH_HOPPER && !dev->hopper) return HISA_K_EUNSUPPORTED;
    /* Only the portable kernels run without Hopper code or when asked for by name: prefill then
     * takes the decode kernels' chunk rows (select.cu), not prefill.cu's wgmma, and fp8_native
     * computes exactly. Read before AUTO resolves, which also lands on PORTABLE. */
    dev->all_portable = !dev->hopper || dev->path == HISA_K_PATH_PORTABLE;
    /* AUTO: the scorer measured fastest here. On the H200 the mma.sync scorer is (flat 64 x 128K
     * 572 us against 626 us for the wgmma one; bench/NOTES-decode.md), so it stays the default
     * until the Hopper scorer wins; without Hopper code it is the only one. */
    if (dev->path == HISA_K_PATH_AUTO) dev->path = HISA_K_PATH_PORTABLE;
    int err = hisa__k_select_init(dev);
    if (!err && dev->hopper) err = hisa__k_prefill_init(); /* prefill is wgmma code */
    return err;
}
