-- Argo CD health check for kubetune.dev/FineTuneJob: phase and conditions -> health.
hs = {}
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator"
  return hs
end

local invalid = condition("Validated")
if invalid ~= nil and invalid.status == "False" then
  hs.status = "Degraded"
  hs.message = invalid.reason .. ": " .. invalid.message
  return hs
end

local phase = obj.status.phase
if phase == "Failed" then
  local failed = condition("Failed")
  hs.status = "Degraded"
  hs.message = failed ~= nil and (failed.reason .. ": " .. failed.message) or "Failed"
  return hs
end
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.runPolicy.suspend or a queue)"
  return hs
end
if phase == "Succeeded" then
  local bias = condition("BiasAuditPassed")
  if bias ~= nil and bias.status == "False" then
    hs.status = "Degraded"
    hs.message = "Succeeded, but the bias audit failed: " .. bias.message
    return hs
  end
  hs.status = "Healthy"
  hs.message = obj.status.metricSummary or "Succeeded"
  return hs
end

hs.status = "Progressing"
local percent = 0
if obj.status.progress ~= nil and obj.status.progress.percent ~= nil then
  percent = obj.status.progress.percent
end
hs.message = phase .. ", " .. percent .. "% done"
return hs
