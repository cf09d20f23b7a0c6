# Build the packaged metabgm-edge on Windows: dist\metabgm-edge\ (one folder), dist\metabgm-edge-onefile.exe,
# the Minecraft connector's single executable (dist\metabgm-edge-minecraft\) and its protocol data packs
# (dist\minecraft-data\). The same steps as `make package` on Linux; packaging\build.py does the freezing.
#
#   powershell -ExecutionPolicy Bypass -File packaging\build-windows.ps1 [-Flavor cpu|gpu|rtx] [-Python python]
#              [-MinecraftVersions 1.16.5,1.18.2,1.20.1]
#
# Needs Python 3.11 or newer (64-bit) and Node.js 20 on PATH; the network to PyPI and npm. It was
# written for GitHub's windows-2022 runners (.github/workflows/package-windows.yml) and has NOT been run
# on Windows by this project yet (the development machines are Linux).
param(
    [ValidateSet('cpu', 'gpu', 'rtx')][string]$Flavor = 'cpu',
    [string]$Python = 'python',
    [string[]]$MinecraftVersions = @('1.16.5', '1.18.2', '1.20.1')
)
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '..')

function Invoke-Step([string]$What, [scriptblock]$Block) {
    Write-Host "[package] $What"
    & $Block
    if ($LASTEXITCODE -ne 0) { throw "[package] failed: $What (exit code $LASTEXITCODE)" }
}

Invoke-Step 'npm ci in connectors\minecraft' { Push-Location connectors\minecraft; npm ci --no-audit --no-fund --loglevel=error; Pop-Location }
Invoke-Step 'npm ci in packaging\minecraft' { Push-Location packaging\minecraft; npm ci --no-audit --no-fund --loglevel=error; Pop-Location }
Invoke-Step "PyInstaller, $Flavor flavor (one folder and one file)" { & $Python packaging\build.py --flavor $Flavor }
if ($Flavor -eq 'cpu') {
    # node.exe is Authenticode-signed; injecting the script invalidates that signature. Windows runs the
    # result, and a release would sign it again (signtool) before upload.
    Invoke-Step 'the connector as a single executable' { node packaging\minecraft\build.js sea dist\metabgm-edge-minecraft }
    Invoke-Step 'Minecraft protocol data packs' { node packaging\minecraft\build.js data dist\minecraft-data @MinecraftVersions }
}
Get-ChildItem dist | Format-Table Name, Length
