/**
 * Ascend 310 inference of an exported detector MINDIR over a preprocess.py folder (MindSpore C++ API).
 *
 *   main --mindir_path=MODEL.mindir --input_dir=BIN_DIR --result_dir=RESULT_DIR [--device_id=0]
 *
 * Loads the graph with Serialization::Load, builds it for an Ascend 310 device, then for each stem of
 * BIN_DIR/manifest.txt, in order, feeds <stem>_<i>.bin to input i (their sizes must equal the graph's), times
 * Predict and writes output j to RESULT_DIR/<stem>_<j>.bin. RESULT_DIR/manifest.txt is written last, then the
 * mean latency is printed. Same protocol as tools/infer_mindir.py (src/deploy/bin_io.py).
 */
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "inc/utils.h"
#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/serialization.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace {

const char kUsage[] =
    "usage: main --mindir_path=MODEL.mindir --input_dir=BIN_DIR --result_dir=RESULT_DIR [--device_id=0]";

int Fail(const std::string &message) {
  std::cerr << "ascend310_infer: error: " << message << std::endl;
  return 1;
}

bool LoadModel(const std::string &mindir_path, int device_id, mindspore::Model *model, std::string *error) {
  auto context = std::make_shared<mindspore::Context>();
  auto ascend310 = std::make_shared<mindspore::Ascend310DeviceInfo>();
  ascend310->SetDeviceID(device_id);
  context->MutableDeviceInfo().push_back(ascend310);

  mindspore::Graph graph;
  mindspore::Status status = mindspore::Serialization::Load(mindir_path, mindspore::ModelType::kMindIR, &graph);
  if (status != mindspore::kSuccess) {
    *error = "cannot load " + mindir_path + ": " + status.ToString();
    return false;
  }
  status = model->Build(mindspore::GraphCell(graph), context);
  if (status != mindspore::kSuccess) {
    *error = "cannot build " + mindir_path + " for Ascend 310 device " + std::to_string(device_id) + ": " +
             status.ToString();
    return false;
  }
  return true;
}

// Reads the input files of one image into `buffers` and wraps them as tensors shaped like the graph inputs.
bool ReadInputs(const std::string &input_dir, const std::string &stem,
                const std::vector<mindspore::MSTensor> &model_inputs, std::vector<std::vector<char>> *buffers,
                std::vector<mindspore::MSTensor> *inputs, std::string *error) {
  buffers->assign(model_inputs.size(), std::vector<char>());
  inputs->clear();
  for (size_t i = 0; i < model_inputs.size(); ++i) {
    const std::string path = deploy::JoinPath(input_dir, deploy::TensorFileName(stem, i));
    if (!deploy::ReadBinaryFile(path, &(*buffers)[i], error)) {
      return false;
    }
    const mindspore::MSTensor &spec = model_inputs[i];
    if ((*buffers)[i].size() != spec.DataSize()) {
      *error = path + " holds " + std::to_string((*buffers)[i].size()) + " bytes but graph input " + std::to_string(i) +
               " (" + spec.Name() + ") needs " + std::to_string(spec.DataSize()) +
               "; preprocess with the image size the MINDIR was exported for";
      return false;
    }
    inputs->emplace_back(spec.Name(), spec.DataType(), spec.Shape(), (*buffers)[i].data(), (*buffers)[i].size());
  }
  return true;
}

bool WriteOutputs(const std::string &result_dir, const std::string &stem,
                  const std::vector<mindspore::MSTensor> &outputs, std::string *error) {
  for (size_t j = 0; j < outputs.size(); ++j) {
    const std::shared_ptr<const void> data = outputs[j].Data();
    const std::string path = deploy::JoinPath(result_dir, deploy::TensorFileName(stem, j));
    if (data == nullptr || !deploy::WriteBinaryFile(path, data.get(), outputs[j].DataSize(), error)) {
      if (data == nullptr) {
        *error = "output " + std::to_string(j) + " of " + stem + " has no host data";
      }
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char **argv) {
  std::map<std::string, std::string> args;
  std::string error;
  if (!deploy::ParseArgs(argc, argv, {"mindir_path", "input_dir", "result_dir", "device_id"}, &args, &error)) {
    return Fail(error + "\n" + kUsage);
  }
  for (const char *required : {"mindir_path", "input_dir", "result_dir"}) {
    if (args.count(required) == 0) {
      return Fail(std::string("--") + required + " is required\n" + kUsage);
    }
  }
  const int device_id = args.count("device_id") != 0 ? std::stoi(args["device_id"]) : 0;

  std::vector<std::string> stems;
  if (!deploy::ReadManifest(deploy::JoinPath(args["input_dir"], deploy::kManifestName), &stems, &error)) {
    return Fail(error);
  }
  mindspore::Model model;
  if (!LoadModel(args["mindir_path"], device_id, &model, &error)) {
    return Fail(error);
  }
  const std::vector<mindspore::MSTensor> model_inputs = model.GetInputs();

  std::vector<double> latencies_ms;
  std::vector<std::vector<char>> buffers;
  std::vector<mindspore::MSTensor> inputs;
  for (const std::string &stem : stems) {
    if (!ReadInputs(args["input_dir"], stem, model_inputs, &buffers, &inputs, &error)) {
      return Fail(error);
    }
    std::vector<mindspore::MSTensor> outputs;
    const auto start = std::chrono::steady_clock::now();
    const mindspore::Status status = model.Predict(inputs, &outputs);
    const auto end = std::chrono::steady_clock::now();
    if (status != mindspore::kSuccess) {
      return Fail("Predict failed on " + stem + ": " + status.ToString());
    }
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(end - start).count());
    if (!WriteOutputs(args["result_dir"], stem, outputs, &error)) {
      return Fail(error);
    }
  }
  if (!deploy::WriteManifest(deploy::JoinPath(args["result_dir"], deploy::kManifestName), stems, &error)) {
    return Fail(error);
  }
  std::cout << stems.size() << " images; mean latency " << deploy::Mean(latencies_ms) << " ms/image; outputs in "
            << args["result_dir"] << std::endl;
  return 0;
}
