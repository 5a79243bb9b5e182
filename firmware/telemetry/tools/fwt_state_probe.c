/* fwt_state_probe.c: `make footprint` reads sizeof(fwt_aggregator_t) from this object's .bss, and the
 * build fails here if the state outgrows its 512-byte RAM budget. */
#include "fw_telemetry.h"

fwt_aggregator_t fwt_state_probe;

typedef char fwt_state_fits_in_512_bytes[(sizeof(fwt_aggregator_t) <= 512u) ? 1 : -1];
