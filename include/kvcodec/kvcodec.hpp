// Umbrella header of the kvcodec library.
#pragma once

#include "kvcodec/codec.hpp"
#include "kvcodec/config.hpp"
#include "kvcodec/format.hpp"
#include "kvcodec/metrics.hpp"
#include "kvcodec/profile.hpp"
#include "kvcodec/status.hpp"
#include "kvcodec/tensor.hpp"
#include "kvcodec/version.hpp"
