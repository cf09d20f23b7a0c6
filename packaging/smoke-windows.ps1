# Run the Windows one-folder build the way a player's PC would: no Python, no virtual environment, a
# PATH with Windows' own folders only, the user folders in a temporary profile. The same checks as
# tests/test_package.py on Linux (doctor, render, describe, play --fast 20 s, a bad input). NOT run here
# (written for .github/workflows/package-windows.yml).
param([string]$Exe = 'dist\metabgm-edge\metabgm-edge.exe')
$ErrorActionPreference = 'Stop'
$exe = (Resolve-Path $Exe).Path
$work = Join-Path $env:RUNNER_TEMP 'metabgm-smoke'
New-Item -ItemType Directory -Force $work | Out-Null
$env:PATH = "$env:SystemRoot\System32;$env:SystemRoot"
$env:LOCALAPPDATA = Join-Path $work 'AppData\Local'
$env:USERPROFILE = $work
Remove-Item Env:PYTHONPATH, Env:PYTHONHOME, Env:VIRTUAL_ENV -ErrorAction SilentlyContinue
Set-Location $work

function Check([string]$What, [scriptblock]$Block) {
    Write-Host "[smoke] $What"
    & $Block
    if ($LASTEXITCODE -ne 0) { throw "[smoke] failed: $What (exit code $LASTEXITCODE)" }
}

Check 'doctor' { & $exe doctor }
Check 'render' { & $exe render 'calm piano in C major, 80 BPM' --seconds 4 --out (Join-Path $work 'r.wav') }
Check 'describe' { & $exe schema --example | & $exe describe - --text composer }
Check 'play --fast --duration 20' { & $exe play --fast --duration 20 --out (Join-Path $work 'F.wav') }
$wav = Get-Item (Join-Path $work 'F.wav')
$expected = 44 + 20 * 32000 * 2 * 4   # 20 s of 32 kHz float32 stereo after the header
if ($wav.Length -lt $expected) { throw "[smoke] F.wav is $($wav.Length) bytes, expected at least $expected" }
& $exe describe (Join-Path $work 'missing.json') 2> (Join-Path $work 'err.txt')
if ($LASTEXITCODE -eq 0) { throw '[smoke] a missing scene file did not fail' }
$err = Get-Content (Join-Path $work 'err.txt')
if (@($err).Count -ne 1) { throw "[smoke] expected one line of error, got: $err" }
Write-Host "[smoke] ok: $err"
